//! Leader election through a `coordination.k8s.io` Lease. Every replica runs its watches; only
//! the holder writes.
//!
//! - The holder renews every `duration - grace` with a write conditional on the Lease's
//!   `resourceVersion`. It may write while its last confirmed renewal (the time it *sent* the
//!   request that succeeded) is younger than the duration less a margin: a holder that cannot
//!   renew (the API is unreachable, slow or stalled) stops writing before anyone may take over,
//!   whatever its requests are still waiting for.
//! - A follower takes an expired Lease: one whose record did not change for its
//!   `leaseDurationSeconds`, as timed by the follower from when it saw the record change (no
//!   clocks are compared across machines).
//! - A follower watches the Lease, so a Lease the holder released on shutdown is taken at once
//!   rather than when it would have expired.
//!
//! The decisions are a pure function ([`next_step`]); the task around it does the requests.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// Run as a shard of this ControllerRing (the kubernetes-controller-sharding protocol)
    /// instead of electing a leader: the shard Lease is named after the identity, and only the
    /// objects the sharder assigns to this shard are watched and reconciled.
    #[arg(long, env = "HOTCONF_CONTROLLER_RING", conflicts_with = "leader_elect")]
    pub controller_ring: Option<String>,
}

impl LeaderArgs {
    /// This replica's identity: `--lease-identity`, else `$POD_NAME`, else host name and pid.
    pub fn identity(&self) -> String {
        self.lease_identity.clone().unwrap_or_else(default_identity)
    }
}

/// A running election: `is_leader` follows the Lease.
pub struct Election {
    /// true while this replica holds the Lease and may write.
    pub is_leader: watch::Receiver<bool>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    // Leader election off: the sender that keeps `is_leader` true.
    _solo: Option<watch::Sender<bool>>,
}

impl Election {
    /// Always the leader (leader election off).
    pub fn solo() -> Self {
        let (tx, rx) = watch::channel(true);
        Election {
            is_leader: rx,
            running: None,
            _solo: Some(tx),
        }
    }

    /// Starts competing for the Lease.
    pub fn start(client: Client, args: &LeaderArgs) -> Self {
        Self::start_on(
            client,
            args,
            args.lease_name.clone(),
            args.identity(),
            BTreeMap::new(),
        )
    }

    /// Holds the shard Lease of `shard`: named after the shard, held by it, labelled for its
    /// ring. The same Lease mechanics as an election, with one candidate: it writes while it
    /// holds its Lease, and the sharder takes an expired one.
    pub fn start_shard(client: Client, args: &LeaderArgs, shard: &crate::sharding::Shard) -> Self {
        Self::start_on(
            client,
            args,
            shard.name.clone(),
            shard.name.clone(),
            shard.lease_labels(),
        )
    }

    fn start_on(
        client: Client,
        args: &LeaderArgs,
        lease_name: String,
        identity: String,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let timing = Timing::new(args.lease_duration, args.lease_grace);
        let (tx, rx) = watch::channel(false);
        let (until_tx, until_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let elector = Elector {
            leases: Api::namespaced(client, &namespace),
            name: lease_name.clone(),
            identity: identity.clone(),
            labels,
            timing,
            until: until_tx,
        };
        tracing::info!(lease = %lease_name, %namespace, %identity, ?timing, "leader election started");
        let task = tokio::spawn(async move {
            let gate = tokio::spawn(gate(until_rx, tx));
            elector.run(stop_rx).await;
            let _ = gate.await;
        });
        Election {
            is_leader: rx,
            running: Some((stop_tx, task)),
            _solo: None,
        }
    }

    /// Stops writing, gives up the Lease (if held) and waits until it is released.
    pub async fn release(self) {
        let Some((stop, task)) = self.running else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("the leader lease was not released within 5s");
        }
    }
}

/// The election's timing, from `--lease-duration` and `--lease-grace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the Lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How much sooner than the duration a holder that could not renew stops writing.
    pub margin: Duration,
    /// How long after a failed request the next is made.
    pub retry: Duration,
    /// How long a request may take: long enough for a slow API server (a renewal that takes
    /// a second still confirms from when it was sent), short enough to retry before the
    /// writes' deadline.
    pub request_timeout: Duration,
}

impl Timing {
    /// From whole seconds: the grace is kept within 1..duration.
    pub fn new(duration: u64, grace: u64) -> Timing {
        let grace = grace.min(duration.saturating_sub(1)).max(1);
        let duration = Duration::from_secs(duration.max(grace + 1));
        Timing {
            duration,
            renew_every: duration - Duration::from_secs(grace),
            // A quarter: room for a write that passed the check to reach the server (through a
            // slow or resetting network) before anyone may take over.
            margin: (duration / 4).max(Duration::from_millis(250)),
            retry: (duration / 8).max(Duration::from_millis(250)),
            request_timeout: duration / 2,
        }
    }

    /// Until when a holder whose renewal sent at `confirmed` succeeded may write.
    pub fn writes_until(&self, confirmed: Instant) -> Instant {
        confirmed + self.duration - self.margin
    }
}

/// What this replica knows of the Lease.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The Lease as last read, watched or written (`None`: not read yet).
    pub lease: Option<Option<Lease>>,
    /// When its record (holder, acquire and renew times) was seen to change.
    pub changed_at: Option<Instant>,
    /// When this replica's last successful acquire or renewal was sent, while it holds it.
    pub confirmed: Option<Instant>,
    /// No request before this (the last one failed).
    pub retry_at: Option<Instant>,
}

/// What the elector does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the Lease (nothing known yet).
    Read,
    /// Create the Lease, or take it over (free, expired, or ours without a confirmation).
    Acquire,
    /// Renew the Lease this replica holds.
    Renew,
    /// Nothing until then (or until the Lease changes).
    Wait(Instant),
}

fn record(lease: &Lease) -> (Option<&str>, Option<&MicroTime>, Option<&MicroTime>) {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(holder_of),
        spec.and_then(|s| s.acquire_time.as_ref()),
        spec.and_then(|s| s.renew_time.as_ref()),
    )
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref().and_then(holder_of)
}

impl View {
    /// Takes in the Lease as read, watched or written at `now`.
    pub fn saw(&mut self, lease: Option<Lease>, now: Instant) {
        let before = self.lease.as_ref().map(|l| l.as_ref().map(record));
        let after = Some(lease.as_ref().map(record));
        if before != after {
            self.changed_at = Some(now);
        }
        self.lease = Some(lease);
    }

    /// The holder the Lease names.
    pub fn holder(&self) -> Option<&str> {
        self.lease.as_ref()?.as_ref().and_then(holder)
    }
}

/// The next step for `identity`, pure.
pub fn next_step(view: &View, identity: &str, timing: &Timing, now: Instant) -> Step {
    if let Some(at) = view.retry_at
        && now < at
    {
        return Step::Wait(at);
    }
    let Some(lease) = &view.lease else {
        return Step::Read;
    };
    let Some(lease) = lease else {
        return Step::Acquire;
    };
    match (holder(lease), view.confirmed) {
        (Some(h), Some(confirmed)) if h == identity => {
            let due = confirmed + timing.renew_every;
            if now >= due {
                Step::Renew
            } else {
                Step::Wait(due)
            }
        }
        // Free, or ours from an earlier run of this identity.
        (None, _) => Step::Acquire,
        (Some(h), None) if h == identity => Step::Acquire,
        (Some(_), _) => {
            let lasts = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(timing.duration, Duration::from_secs);
            let expires = view.changed_at.unwrap_or(now) + lasts;
            if now >= expires {
                Step::Acquire
            } else {
                Step::Wait(expires)
            }
        }
    }
}

struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    // The Lease's labels (a shard Lease's ring).
    labels: BTreeMap<String, String>,
    timing: Timing,
    // Until when this replica may write (`None`: it may not).
    until: watch::Sender<Option<Instant>>,
}

impl Elector {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        // Half a second between attempts after an error, never more: a follower whose watch is
        // down notices the holder's renewals only by the 409 of a takeover attempt, and then
        // waits a whole duration again (the default backoff, up to 30 s, made failovers slow).
        let events = watcher(self.leases.clone(), config)
            .backoff(crate::health::FixedBackoff(self.timing.retry))
            .applied_objects();
        tokio::pin!(events);
        let mut view = View::default();
        loop {
            let now = Instant::now();
            let wake = match next_step(&view, &self.identity, &self.timing, now) {
                Step::Wait(at) => at,
                step => {
                    self.act(&step, &mut view).await;
                    continue;
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                event = events.next() => match event {
                    Some(Ok(lease)) => {
                        view.saw(Some(lease), Instant::now());
                        if view.confirmed.is_some() && view.holder() != Some(self.identity.as_str()) {
                            // A watch may lag behind our own writes: read it before giving up.
                            view.lease = None;
                        }
                    }
                    Some(Err(error)) => tracing::debug!(%error, "watching the Lease"),
                    None => {}
                },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.release(&view).await;
    }

    // One request, within the retry time. A write that succeeds confirms this replica as the
    // holder from when it was sent; a conflict means the Lease changed (it is read again).
    async fn act(&self, step: &Step, view: &mut View) {
        let sent = Instant::now();
        let result =
            tokio::time::timeout(self.timing.request_timeout, self.request(step, view)).await;
        view.retry_at = None;
        match result {
            Ok(Ok(lease)) => {
                let ours = lease.as_ref().and_then(holder) == Some(self.identity.as_str());
                let wrote = *step != Step::Read;
                view.saw(lease, Instant::now());
                if wrote && ours {
                    if view.confirmed.is_none() {
                        tracing::info!(identity = %self.identity, "acquired the leader lease");
                    }
                    view.confirmed = Some(sent);
                    self.until
                        .send_replace(Some(self.timing.writes_until(sent)));
                } else if !ours {
                    self.lost(view);
                }
            }
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                // Gone (created next), or its namespace is: not at once again.
                view.saw(None, Instant::now());
                view.retry_at = Some(Instant::now() + self.timing.retry);
                self.lost(view);
            }
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                // Someone else wrote it first: read it again before anything else.
                view.lease = None;
                self.lost(view);
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, ?step, "a Lease request failed");
                view.retry_at = Some(Instant::now() + self.timing.retry);
            }
            Err(_) => {
                tracing::debug!(?step, "a Lease request timed out");
                view.retry_at = Some(Instant::now() + self.timing.retry);
            }
        }
    }

    fn lost(&self, view: &mut View) {
        if view.confirmed.take().is_some() {
            tracing::warn!(identity = %self.identity, "lost the leader lease");
        }
        self.until.send_replace(None);
    }

    async fn request(&self, step: &Step, view: &View) -> Result<Option<Lease>, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let params = PostParams {
            field_manager: Some("hotconf-leader".into()),
            ..PostParams::default()
        };
        let current = view.lease.clone().flatten();
        match (step, current) {
            (Step::Read, _) => self.leases.get_opt(&self.name).await,
            (Step::Acquire, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now.clone(), now, 0)),
                };
                self.leases.create(&params, &lease).await.map(Some)
            }
            (Step::Acquire, Some(mut lease)) => {
                let spec = lease.spec.unwrap_or_default();
                let transitions = spec.lease_transitions.unwrap_or(0)
                    + i32::from(holder_of(&spec) != Some(self.identity.as_str()));
                lease.spec = Some(self.spec(now.clone(), now, transitions));
                if !self.labels.is_empty() {
                    lease
                        .metadata
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .extend(self.labels.clone());
                }
                self.leases
                    .replace(&self.name, &params, &lease)
                    .await
                    .map(Some)
            }
            (Step::Renew, Some(mut lease)) => {
                let mut spec = lease.spec.unwrap_or_default();
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(self.duration_seconds());
                lease.spec = Some(spec);
                self.leases
                    .replace(&self.name, &params, &lease)
                    .await
                    .map(Some)
            }
            (Step::Renew, None) | (Step::Wait(_), _) => Ok(view.lease.clone().flatten()),
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX)
    }

    // Stops writing first, then frees the Lease if this replica holds it.
    async fn release(&self, view: &View) {
        let held = view.confirmed.is_some();
        self.until.send_replace(None);
        let Some(Some(mut lease)) = view.lease.clone() else {
            return;
        };
        if !held || holder(&lease) != Some(self.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = None;
        }
        let params = PostParams::default();
        let request = self.leases.replace(&self.name, &params, &lease);
        match tokio::time::timeout(Duration::from_secs(3), request).await {
            Ok(Ok(_)) => tracing::info!("leader lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "releasing the leader lease failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}

fn holder_of(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

// Turns "may write until" into the flag the controllers read, flipping it to false at that
// moment even while a renewal is still waiting for its answer.
async fn gate(mut until: watch::Receiver<Option<Instant>>, tx: watch::Sender<bool>) {
    loop {
        let deadline = *until.borrow_and_update();
        let leading = deadline.is_some_and(|d| Instant::now() < d);
        if *tx.borrow() != leading {
            if !leading && deadline.is_some() {
                tracing::warn!("no Lease renewal confirmed within its duration: writes stop");
            }
            tx.send_replace(leading);
        }
        let lapse = async {
            match deadline {
                Some(d) if leading => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = until.changed() => if changed.is_err() {
                tx.send_replace(false);
                return;
            },
            () = lapse => {}
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

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(4),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn timing_keeps_a_margin_below_the_duration() {
        let t = Timing::new(4, 2);
        assert_eq!(t.duration, Duration::from_secs(4));
        assert_eq!(t.renew_every, Duration::from_secs(2));
        assert_eq!(t.margin, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.writes_until(t0), t0 + Duration::from_secs(3));
        // A grace as long as the duration is cut to leave a renewal period.
        assert_eq!(Timing::new(2, 5).renew_every, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_for_expiry_and_takes_a_released_lease_at_once() {
        let t = Timing::new(4, 2);
        let t0 = Instant::now();
        let mut view = View::default();
        assert_eq!(next_step(&view, "b", &t, t0), Step::Read);
        view.saw(Some(lease(Some("a"), 100)), t0);
        assert_eq!(
            next_step(&view, "b", &t, t0),
            Step::Wait(t0 + Duration::from_secs(4))
        );
        // Renewed: expiry is timed again from when the change was seen.
        let t1 = t0 + Duration::from_secs(2);
        view.saw(Some(lease(Some("a"), 102)), t1);
        assert_eq!(
            next_step(&view, "b", &t, t1 + Duration::from_secs(3)),
            Step::Wait(t1 + Duration::from_secs(4))
        );
        assert_eq!(
            next_step(&view, "b", &t, t1 + Duration::from_secs(4)),
            Step::Acquire
        );
        // The same record seen again is no change.
        view.saw(Some(lease(Some("a"), 102)), t1 + Duration::from_secs(3));
        assert_eq!(view.changed_at, Some(t1));
        // Released: taken at once.
        view.saw(Some(lease(None, 102)), t1 + Duration::from_millis(100));
        assert_eq!(
            next_step(&view, "b", &t, t1 + Duration::from_millis(100)),
            Step::Acquire
        );
        // No Lease at all: created.
        view.saw(None, t1);
        assert_eq!(next_step(&view, "b", &t, t1), Step::Acquire);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_renews_on_time_and_retries_after_a_failure() {
        let t = Timing::new(4, 2);
        let t0 = Instant::now();
        let mut view = View::default();
        view.saw(Some(lease(Some("a"), 100)), t0);
        // Ours from an earlier run, never confirmed in this one: acquired again.
        assert_eq!(next_step(&view, "a", &t, t0), Step::Acquire);
        view.confirmed = Some(t0);
        assert_eq!(
            next_step(&view, "a", &t, t0),
            Step::Wait(t0 + Duration::from_secs(2))
        );
        assert_eq!(
            next_step(&view, "a", &t, t0 + Duration::from_secs(2)),
            Step::Renew
        );
        view.retry_at = Some(t0 + Duration::from_millis(2500));
        assert_eq!(
            next_step(&view, "a", &t, t0 + Duration::from_secs(2)),
            Step::Wait(t0 + Duration::from_millis(2500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_stop_when_no_renewal_was_confirmed_in_time() {
        let (until_tx, until_rx) = watch::channel(None);
        let (tx, mut rx) = watch::channel(false);
        let gate = tokio::spawn(gate(until_rx, tx));
        let t0 = Instant::now();
        until_tx.send_replace(Some(t0 + Duration::from_millis(3500)));
        rx.wait_for(|l| *l).await.unwrap();
        // No renewal arrives: false at the deadline, not later.
        rx.wait_for(|l| !*l).await.unwrap();
        assert!(Instant::now() >= t0 + Duration::from_millis(3500));
        assert!(Instant::now() < t0 + Duration::from_millis(3600));
        // Renewed: writing again; released: stopped at once.
        until_tx.send_replace(Some(Instant::now() + Duration::from_secs(3)));
        rx.wait_for(|l| *l).await.unwrap();
        until_tx.send_replace(None);
        rx.wait_for(|l| !*l).await.unwrap();
        drop(until_tx);
        gate.await.unwrap();
        assert!(!*rx.borrow());
    }
}
