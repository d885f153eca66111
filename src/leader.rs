//! Leader election through a `coordination.k8s.io` Lease (kube-lease-manager). Every replica
//! runs its watches; only the holder writes. The Lease is released on shutdown, so a successor
//! takes over at once rather than after the Lease expires.

use kube::Client;
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
        let manager = LeaseManagerBuilder::new(client, &args.lease_name)
            .with_namespace(&namespace)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .with_identity(&identity)
            .with_duration(args.lease_duration.max(grace + 1))
            .with_grace(grace)
            .with_field_manager(format!("hotconf-lease-{identity}"))
            .build()
            .await
            .map_err(Error::Leader)?;
        let (rx, handle) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "leader election started");
        Ok(Election {
            is_leader: rx,
            handle: Some(handle),
            _solo: None,
        })
    }

    /// Gives up the Lease (if held) and waits until it is released. Every clone of
    /// `is_leader` must be dropped first: the lease manager releases once no one listens.
    pub async fn release(self) {
        let Election {
            is_leader, handle, ..
        } = self;
        drop(is_leader);
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

fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "hotconf".into());
        format!("{host}-{}", std::process::id())
    })
}
