//! Leader election through a `coordination.k8s.io` Lease (kube-lease-manager). Every replica
//! runs its watches; only the holder writes. The Lease is released on shutdown, so a successor
//! takes over at once rather than after the Lease expires.
//!
//! A holder that cannot renew (the API is unreachable, or slow) must stop writing before
//! another replica may take the Lease over, whatever the lease manager believes: a fence
//! confirms the renewals by reading the Lease, and leadership lapses when no renewal has been
//! confirmed for the Lease's duration less a margin (the chaos suite found two writers in one
//! term after a kube-apiserver restart without it).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;

/// Leader-election settings (`hotconf operator --leader-elect ...`).
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Elect a leader among replicas through a Lease; only the leader writes.
    #[arg(long, env = "HOTCONF_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "HOTCONF_LEASE_NAME", default_value = "hotconf-operator")]
    pub lease_name: String,
    /// The Lease's namespace (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "HOTCONF_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease holds without renewal, in seconds. A killed leader is replaced after
    /// at most about this long; a leader that stops cleanly releases the Lease at once.
    #[arg(long, env = "HOTCONF_LEASE_DURATION", default_value_t = 4)]
    pub lease_duration: u64,
    /// How long before expiry the holder renews, in seconds (less than the duration).
    #[arg(long, env = "HOTCONF_LEASE_GRACE", default_value_t = 2)]
    pub lease_grace: u64,
    /// This replica's identity (default: $POD_NAME, else host name and process id).
    #[arg(long, env = "HOTCONF_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,
}

/// A running election: `is_leader` follows the Lease.
pub struct Election {
    /// true while this replica holds the Lease.
    pub is_leader: watch::Receiver<bool>,
    handle: Option<
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    >,
    // The fence (it holds the lease manager's receiver: stopped before the release).
    fence: Option<JoinHandle<()>>,
    // Leader election off: the sender that keeps `is_leader` true.
    _solo: Option<watch::Sender<bool>>,
}

impl Election {
    /// Always the leader (leader election off).
    pub fn solo() -> Self {
        let (tx, rx) = watch::channel(true);
        Election {
            is_leader: rx,
            handle: None,
            fence: None,
            _solo: Some(tx),
        }
    }

    /// Starts competing for the Lease.
    pub async fn start(client: Client, args: &LeaderArgs) -> Result<Self, Error> {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let identity = args.lease_identity.clone().unwrap_or_else(default_identity);
        let grace = args
            .lease_grace
            .min(args.lease_duration.saturating_sub(1))
            .max(1);
        let duration = args.lease_duration.max(grace + 1);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let manager = LeaseManagerBuilder::new(client, &args.lease_name)
            .with_namespace(&namespace)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(format!("hotconf-lease-{identity}"))
            .build()
            .await
            .map_err(Error::Leader)?;
        let (manager_rx, handle) = manager.watch().await;
        let (tx, rx) = watch::channel(false);
        let fence = tokio::spawn(fence(
            manager_rx,
            tx,
            leases,
            args.lease_name.clone(),
            identity.clone(),
            Duration::from_secs(duration),
        ));
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "leader election started");
        Ok(Election {
            is_leader: rx,
            handle: Some(handle),
            fence: Some(fence),
            _solo: None,
        })
    }

    /// Gives up the Lease (if held) and waits until it is released. Every clone of
    /// `is_leader` must be dropped first: the lease manager releases once no one listens.
    pub async fn release(self) {
        let Election {
            is_leader,
            handle,
            fence,
            ..
        } = self;
        drop(is_leader);
        if let Some(fence) = fence {
            fence.abort();
            let _ = fence.await;
        }
        if let Some(handle) = handle {
            match tokio::time::timeout(std::time::Duration::from_secs(5), handle).await {
                Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader lease failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the lease task failed"),
                Err(_) => tracing::warn!("the leader lease was not released within 5s"),
            }
        }
    }
}

/// Whether a holder may still write: the lease manager says it holds the Lease, and a renewal
/// was confirmed less than `duration - margin` ago (`confirmed`: a lower bound of when it
/// happened, so the check errs on the side of stopping).
pub fn may_write(held: bool, confirmed: Option<Instant>, duration: Duration, now: Instant) -> bool {
    let margin = (duration / 8).max(Duration::from_millis(250));
    held && confirmed
        .is_some_and(|at| now.saturating_duration_since(at) < duration.saturating_sub(margin))
}

// Publishes `may_write` into `tx`: reads the Lease every eighth of its duration (a renewal is
// then confirmed at most two reads after it, well within the duration less the margin); a read that
// finds this replica the holder with a `renewTime` newer than the last read confirms a renewal
// made no earlier than that last read.
async fn fence(
    mut manager: watch::Receiver<bool>,
    tx: watch::Sender<bool>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
) {
    let period = (duration / 8).max(Duration::from_millis(250));
    let mut confirmed: Option<Instant> = None;
    let mut last: Option<(Instant, Option<String>)> = None;
    loop {
        let held = *manager.borrow_and_update();
        let read_at = Instant::now();
        if held {
            match leases.get_opt(&name).await {
                Ok(Some(lease)) => {
                    let spec = lease.spec.unwrap_or_default();
                    let renew = spec.renew_time.map(|t| t.0.to_string());
                    if spec.holder_identity.as_deref() == Some(identity.as_str()) {
                        match &last {
                            // Renewed since the last read: no earlier than that read.
                            Some((at, before)) if *before != renew => confirmed = Some(*at),
                            // The first read as holder: just acquired or renewed.
                            None => confirmed = Some(read_at),
                            _ => {}
                        }
                        last = Some((read_at, renew));
                    } else {
                        (confirmed, last) = (None, None);
                    }
                }
                Ok(None) => (confirmed, last) = (None, None),
                Err(error) => tracing::debug!(%error, "reading the Lease to confirm a renewal"),
            }
        } else {
            (confirmed, last) = (None, None);
        }
        let allowed = may_write(held, confirmed, duration, Instant::now());
        if *tx.borrow() != allowed {
            if !allowed && held {
                tracing::warn!(
                    "no Lease renewal confirmed within its duration: writes stop until one is"
                );
            }
            tx.send_replace(allowed);
        }
        tokio::select! {
            changed = manager.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(period) => {}
        }
    }
}

fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "hotconf".into());
        format!("{host}-{}", std::process::id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_stops_writing_before_its_lease_could_be_taken_over() {
        let duration = Duration::from_secs(4);
        let t0 = Instant::now();
        assert!(may_write(true, Some(t0), duration, t0));
        assert!(may_write(
            true,
            Some(t0),
            duration,
            t0 + Duration::from_millis(3400)
        ));
        assert!(!may_write(
            true,
            Some(t0),
            duration,
            t0 + Duration::from_millis(3500)
        ));
        assert!(
            !may_write(true, None, duration, t0),
            "no renewal confirmed yet"
        );
        assert!(!may_write(false, Some(t0), duration, t0), "not the holder");
    }
}
