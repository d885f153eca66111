//! Health that cannot lie: the state of every watch the operator depends on, and a heartbeat
//! of each controller loop, judged against documented bounds. `/readyz`, `/healthz` and
//! `hotconf_watch_up{kind}` read them ([`Health::readiness`], [`Health::liveness`],
//! [`Health::update_metrics`]).
//!
//! The judgements are pure functions of what was observed and the time (`now` is passed in),
//! so they are tested with a fake clock; [`watch`] is the I/O: supervised watch streams that
//! report here and restart themselves when they stall.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::OperatorMetrics;

mod list;
pub(crate) mod watch;
pub(crate) use list::parse;

/// The health bounds (`hotconf operator --watch-idle-timeout ...`), in seconds.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// A watch that delivers nothing (no event, no bookmark, no successful re-watch) for this
    /// long is stalled: `/readyz` fails and the watch is dropped and re-listed. Keep it above
    /// `--watch-timeout`: a healthy watch shows progress at least that often.
    #[arg(long, env = "HOTCONF_WATCH_IDLE_TIMEOUT", default_value_t = 60)]
    pub watch_idle_timeout: u64,
    /// The server-side `timeoutSeconds` of each watch request: the API server ends the request
    /// and the watch resumes, which proves the path still works even when nothing changes
    /// (bookmarks are best-effort: a quiet watch may get none).
    #[arg(long, env = "HOTCONF_WATCH_TIMEOUT", default_value_t = 30)]
    pub watch_timeout: u64,
    /// `/healthz` fails when a controller loop has not turned for this long (its heartbeat,
    /// sent through the loop's own queue, did not come out), or when one reconcile has run
    /// for longer.
    #[arg(long, env = "HOTCONF_LOOP_STALL_TIMEOUT", default_value_t = 120)]
    pub loop_stall_timeout: u64,
    /// How many custom resources (and projected objects' metadata) one list request asks for,
    /// where a server pages it: one without a watch cache (or while its cache is not ready) reads
    /// each page from etcd and holds it decoded while it answers. A server with a cache answers
    /// the list (asked at any resourceVersion) whole from the cache, whatever the limit.
    #[arg(long, env = "HOTCONF_LIST_PAGE_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub list_page_size: u32,
}

impl Default for HealthArgs {
    fn default() -> Self {
        HealthArgs {
            watch_idle_timeout: 60,
            watch_timeout: 30,
            loop_stall_timeout: 120,
            list_page_size: 500,
        }
    }
}

/// A kube-runtime backoff that always waits the same (`Duration::ZERO`: polls again at once),
/// for streams that back off by themselves or must not wait long (see `health::watch`).
#[derive(Clone, Copy, Debug)]
pub struct FixedBackoff(pub Duration);

impl Iterator for FixedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl kube::runtime::utils::Backoff for FixedBackoff {
    fn reset(&mut self) {}
}

/// The bounds health is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Nothing from a watch for longer: stalled.
    pub idle: Duration,
    /// The server-side timeout of each watch request, in seconds (below `idle`).
    pub watch_timeout: u32,
    /// No heartbeat from a loop, or one reconcile running, for longer: wedged.
    pub loop_stall: Duration,
    /// The page size of a streamed list.
    pub list_page_size: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::from(&HealthArgs::default())
    }
}

impl From<&HealthArgs> for Bounds {
    // The server timeout stays below the idle bound (two thirds of it at most), so a healthy
    // but quiet watch always shows progress in time.
    fn from(args: &HealthArgs) -> Self {
        let idle = args.watch_idle_timeout.max(1);
        let ceiling = (idle * 2 / 3).max(1);
        Bounds {
            idle: Duration::from_secs(idle),
            watch_timeout: u32::try_from(args.watch_timeout.clamp(1, ceiling)).unwrap_or(u32::MAX),
            loop_stall: Duration::from_secs(args.loop_stall_timeout.max(1)),
            list_page_size: args.list_page_size.max(1),
        }
    }
}

/// What a watch watches: the `kind` label of `hotconf_watch_up` and
/// `hotconf_watch_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKind {
    /// The RuntimeConfig watches (one per namespace of the scope, or one for all).
    RuntimeConfig,
    /// The PoolBudget watches.
    PoolBudget,
    /// The projected ConfigMaps (one watch per owning kind and scope).
    ConfigMap,
    /// The projected Secrets and the `valuesFrom` Secrets.
    Secret,
    /// The consumer pods.
    Pod,
}

impl WatchKind {
    /// Every kind, in label order.
    pub const ALL: [WatchKind; 5] = [
        WatchKind::RuntimeConfig,
        WatchKind::PoolBudget,
        WatchKind::ConfigMap,
        WatchKind::Secret,
        WatchKind::Pod,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            WatchKind::RuntimeConfig => "RuntimeConfig",
            WatchKind::PoolBudget => "PoolBudget",
            WatchKind::ConfigMap => "ConfigMap",
            WatchKind::Secret => "Secret",
            WatchKind::Pod => "Pod",
        }
    }
}

/// What a watch is judged to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not listed yet, and nothing has gone wrong.
    Starting,
    /// Listed, and delivering within the bound.
    Up,
    /// Failed; stays so until the next successful (re)list.
    Down(String),
    /// Delivered nothing beyond the bound while the API server answers; restarted, and stays
    /// so until the restarted watch has listed.
    Stalled(String),
}

impl Verdict {
    fn describe(&self) -> String {
        match self {
            Verdict::Starting => "starting: not listed yet".into(),
            Verdict::Up => "up".into(),
            Verdict::Down(why) => format!("down: {why}"),
            Verdict::Stalled(why) => format!("stalled: {why}"),
        }
    }
}

/// Why a watch was restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An error (or an unreachable API server).
    Down(String),
    /// Silence while the API server answers.
    Stalled(String),
}

/// What has been observed of one watch: the pure state machine.
#[derive(Clone, Debug)]
pub struct WatchState {
    synced_once: bool,
    last_progress: Instant,
    problem: Option<Problem>,
}

impl WatchState {
    /// A watch started at `now`.
    pub fn new(now: Instant) -> Self {
        WatchState {
            synced_once: false,
            last_progress: now,
            problem: None,
        }
    }

    /// Something arrived: an event, a bookmark, a successful response, bytes of a stream.
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = self.last_progress.max(now);
    }

    /// A (re)list completed: the watch is trusted again.
    pub fn listed(&mut self, now: Instant) {
        self.synced_once = true;
        self.problem = None;
        self.progress(now);
    }

    /// The watch failed.
    pub fn failed(&mut self, error: String) {
        self.problem = Some(Problem::Down(error));
    }

    /// The watch is restarted at `now` (after `why`, if it was not an error already recorded):
    /// the bound counts again from here.
    pub fn restarted(&mut self, now: Instant, why: Option<Problem>) {
        if let Some(why) = why {
            self.problem = Some(why);
        }
        self.last_progress = now;
    }

    /// How long nothing has arrived.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_progress)
    }

    /// When the watch becomes stalled if nothing arrives.
    pub fn deadline(&self, idle: Duration) -> Instant {
        self.last_progress + idle
    }

    /// The verdict at `now` under the idle bound.
    pub fn verdict(&self, now: Instant, idle: Duration) -> Verdict {
        match &self.problem {
            Some(Problem::Down(why)) => Verdict::Down(why.clone()),
            Some(Problem::Stalled(why)) => Verdict::Stalled(why.clone()),
            None if self.idle_for(now) > idle => Verdict::Stalled(format!(
                "no event or bookmark for {}s (bound {}s)",
                self.idle_for(now).as_secs(),
                idle.as_secs()
            )),
            None if !self.synced_once => Verdict::Starting,
            None => Verdict::Up,
        }
    }
}

/// One watch, as the registry holds it.
pub struct Watch {
    kind: WatchKind,
    name: String,
    state: Mutex<WatchState>,
}

impl Watch {
    fn with<T>(&self, f: impl FnOnce(&mut WatchState) -> T) -> T {
        f(&mut self.state.lock().expect("lock"))
    }

    /// Something arrived now.
    pub fn progress(&self) {
        self.with(|s| s.progress(Instant::now()));
    }
}

/// The heartbeat of one controller loop: the pure part.
#[derive(Clone, Debug, Default)]
pub struct LoopState {
    last_beat: Option<Instant>,
}

impl LoopState {
    /// The heartbeat came out of the loop at `now`.
    pub fn beat(&mut self, now: Instant) {
        self.last_beat = Some(now);
    }

    /// Why the loop counts as wedged at `now`, if it does. A loop that has never turned is
    /// starting (its first list is `/readyz`'s business), not wedged.
    pub fn wedged(&self, now: Instant, bound: Duration) -> Option<String> {
        let silent = now.saturating_duration_since(self.last_beat?);
        (silent > bound).then(|| {
            format!(
                "no heartbeat through its queue for {}s (bound {}s)",
                silent.as_secs(),
                bound.as_secs()
            )
        })
    }
}

/// One controller loop, as the registry holds it.
pub struct Loop {
    name: String,
    state: Mutex<LoopState>,
}

impl Loop {
    /// The heartbeat came out of the loop now.
    pub fn beat(&self) {
        self.state.lock().expect("lock").beat(Instant::now());
    }
}

/// The oldest reconcile in flight that has run beyond `bound`, as a message.
pub fn overdue_reconcile<'a>(
    running: impl IntoIterator<Item = (&'a Instant, &'a String)>,
    now: Instant,
    bound: Duration,
) -> Option<String> {
    let (started, what) = running.into_iter().min_by_key(|(started, _)| **started)?;
    let age = now.saturating_duration_since(*started);
    (age > bound).then(|| {
        format!(
            "the reconcile of {what} has run for {}s (bound {}s)",
            age.as_secs(),
            bound.as_secs()
        )
    })
}

/// The health registry: every watch and loop reports here; the admin endpoints read it.
pub struct Health {
    bounds: Bounds,
    metrics: Option<Arc<OperatorMetrics>>,
    watches: Mutex<Vec<Arc<Watch>>>,
    loops: Mutex<Vec<Arc<Loop>>>,
    running: Mutex<BTreeMap<u64, (Instant, String)>>,
    next: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Bounds::default(), None)
    }
}

impl Health {
    /// A registry judging by `bounds`, recording `hotconf_watch_up` and restarts into `metrics`.
    pub fn new(bounds: Bounds, metrics: Option<Arc<OperatorMetrics>>) -> Self {
        Health {
            bounds,
            metrics,
            watches: Mutex::default(),
            loops: Mutex::default(),
            running: Mutex::default(),
            next: AtomicU64::new(0),
        }
    }

    /// The bounds.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Registers a watch of `kind`, named for messages (`RuntimeConfigs in shop`).
    pub fn register_watch(&self, kind: WatchKind, name: String) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            kind,
            name,
            state: Mutex::new(WatchState::new(Instant::now())),
        });
        self.watches.lock().expect("lock").push(watch.clone());
        watch
    }

    /// Registers a controller loop.
    pub fn register_loop(&self, name: String) -> Arc<Loop> {
        let l = Arc::new(Loop {
            name,
            state: Mutex::default(),
        });
        self.loops.lock().expect("lock").push(l.clone());
        l
    }

    /// A reconcile of `what` starts; it counts as running until the guard is dropped.
    pub fn reconcile_started(self: &Arc<Self>, what: String) -> RunningReconcile {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .expect("lock")
            .insert(id, (Instant::now(), what));
        RunningReconcile {
            health: self.clone(),
            id,
        }
    }

    pub(crate) fn restarted(&self, kind: WatchKind) {
        if let Some(metrics) = &self.metrics {
            metrics
                .watch_restarts
                .get_or_create(&OperatorMetrics::kind(kind.label()))
                .inc();
        }
    }

    fn verdicts(&self, now: Instant) -> Vec<(WatchKind, String, Verdict)> {
        self.watches
            .lock()
            .expect("lock")
            .iter()
            .map(|w| {
                (
                    w.kind,
                    w.name.clone(),
                    w.with(|s| s.verdict(now, self.bounds.idle)),
                )
            })
            .collect()
    }

    /// `/readyz`: `Ok` when every watch is up, else every watch that is not and why.
    pub fn readiness(&self, now: Instant) -> Result<String, String> {
        let verdicts = self.verdicts(now);
        if verdicts.is_empty() {
            return Err("no watch has started yet\n".into());
        }
        let bad: Vec<String> = verdicts
            .iter()
            .filter(|(_, _, v)| *v != Verdict::Up)
            .map(|(kind, name, v)| format!("{} watch of {name}: {}\n", kind.label(), v.describe()))
            .collect();
        if bad.is_empty() {
            Ok(format!("ok: {} watches up\n", verdicts.len()))
        } else {
            Err(bad.concat())
        }
    }

    /// `/healthz`: `Ok` unless a controller loop is wedged.
    pub fn liveness(&self, now: Instant) -> Result<String, String> {
        let bound = self.bounds.loop_stall;
        let mut bad: Vec<String> = self
            .loops
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| {
                let why = l.state.lock().expect("lock").wedged(now, bound)?;
                Some(format!("controller {}: {why}\n", l.name))
            })
            .collect();
        let running = self.running.lock().expect("lock");
        if let Some(why) = overdue_reconcile(running.values().map(|(t, w)| (t, w)), now, bound) {
            bad.push(format!("{why}\n"));
        }
        if bad.is_empty() {
            Ok("ok\n".into())
        } else {
            Err(bad.concat())
        }
    }

    /// Sets `hotconf_watch_up{kind}`: 1 when every watch of the kind is up, 0 otherwise.
    pub fn update_metrics(&self, now: Instant) {
        let Some(metrics) = &self.metrics else { return };
        let mut up: BTreeMap<WatchKind, bool> = BTreeMap::new();
        for (kind, _, verdict) in self.verdicts(now) {
            *up.entry(kind).or_insert(true) &= verdict == Verdict::Up;
        }
        for (kind, up) in up {
            metrics
                .watch_up
                .get_or_create(&OperatorMetrics::kind(kind.label()))
                .set(i64::from(up));
        }
    }
}

/// A reconcile in flight (see [`Health::reconcile_started`]).
pub struct RunningReconcile {
    health: Arc<Health>,
    id: u64,
}

impl Drop for RunningReconcile {
    fn drop(&mut self) {
        self.health.running.lock().expect("lock").remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_watch_is_up_after_its_list_and_stalls_when_silent_beyond_the_bound() {
        let t0 = Instant::now();
        let mut w = WatchState::new(t0);
        assert_eq!(w.verdict(t0 + secs(5), IDLE), Verdict::Starting);
        w.listed(t0 + secs(5));
        assert_eq!(w.verdict(t0 + secs(6), IDLE), Verdict::Up);
        // Bookmarks (any progress) keep it up.
        w.progress(t0 + secs(50));
        assert_eq!(w.verdict(t0 + secs(109), IDLE), Verdict::Up);
        assert_eq!(w.deadline(IDLE), t0 + secs(110));
        // Silence beyond the bound: stalled even before the supervisor notices.
        assert!(
            matches!(w.verdict(t0 + secs(111), IDLE), Verdict::Stalled(m) if m.contains("61s"))
        );
        // Restarted because of it: stalled until the restarted watch has listed, even though
        // the bound counts again from the restart.
        w.restarted(t0 + secs(111), Some(Problem::Stalled("silent".into())));
        w.progress(t0 + secs(112));
        assert_eq!(
            w.verdict(t0 + secs(112), IDLE),
            Verdict::Stalled("silent".into())
        );
        w.listed(t0 + secs(113));
        assert_eq!(w.verdict(t0 + secs(114), IDLE), Verdict::Up);
    }

    #[test]
    fn a_failed_watch_is_down_until_it_lists_again() {
        let t0 = Instant::now();
        let mut w = WatchState::new(t0);
        w.failed("403".into());
        assert_eq!(
            w.verdict(t0, IDLE),
            Verdict::Down("403".into()),
            "before the first sync too"
        );
        w.listed(t0 + secs(1));
        w.failed("connection reset".into());
        w.restarted(t0 + secs(2), None);
        // Bytes of the retried watch do not make it trusted again; only a list does.
        w.progress(t0 + secs(3));
        assert_eq!(
            w.verdict(t0 + secs(3), IDLE),
            Verdict::Down("connection reset".into())
        );
        w.listed(t0 + secs(4));
        assert_eq!(w.verdict(t0 + secs(4), IDLE), Verdict::Up);
        // Progress never goes backwards.
        w.progress(t0);
        assert_eq!(w.deadline(IDLE), t0 + secs(64));
    }

    #[test]
    fn a_loop_is_wedged_only_after_turning_once_and_then_falling_silent() {
        let t0 = Instant::now();
        let bound = secs(120);
        let mut l = LoopState::default();
        assert_eq!(l.wedged(t0 + secs(1000), bound), None, "starting");
        l.beat(t0);
        assert_eq!(l.wedged(t0 + secs(120), bound), None);
        assert!(l.wedged(t0 + secs(121), bound).unwrap().contains("121s"));
        l.beat(t0 + secs(121));
        assert_eq!(l.wedged(t0 + secs(122), bound), None, "recovered");
    }

    #[test]
    fn the_oldest_reconcile_in_flight_beyond_the_bound_is_named() {
        let t0 = Instant::now();
        let (a, b) = (
            "RuntimeConfig shop/a".to_string(),
            "PoolBudget shop/b".to_string(),
        );
        let running = [(t0 + secs(10), b.clone()), (t0, a.clone())];
        let iter = || running.iter().map(|(t, w)| (t, w));
        assert_eq!(overdue_reconcile(iter(), t0 + secs(120), secs(120)), None);
        let why = overdue_reconcile(iter(), t0 + secs(125), secs(120)).unwrap();
        assert!(why.contains(&a) && why.contains("125s"), "{why}");
        assert_eq!(overdue_reconcile(std::iter::empty(), t0, secs(1)), None);
    }

    #[tokio::test]
    async fn the_registry_names_what_is_not_up_and_counts_running_reconciles() {
        let health = Arc::new(Health::new(
            Bounds::from(&HealthArgs {
                watch_idle_timeout: 3,
                watch_timeout: 30,
                loop_stall_timeout: 2,
                list_page_size: 500,
            }),
            None,
        ));
        assert_eq!(
            health.bounds().watch_timeout,
            2,
            "kept below the idle bound"
        );
        let now = Instant::now();
        assert!(health.readiness(now).is_err(), "nothing registered");
        let rtc = health.register_watch(WatchKind::RuntimeConfig, "RuntimeConfig (all)".into());
        let pods = health.register_watch(WatchKind::Pod, "Pods in all namespaces".into());
        let err = health.readiness(now).unwrap_err();
        assert!(
            err.contains("RuntimeConfig watch") && err.contains("not listed yet"),
            "{err}"
        );
        rtc.with(|s| s.listed(now));
        pods.with(|s| s.listed(now));
        assert!(health.readiness(now).is_ok());
        pods.with(|s| s.failed("forbidden".into()));
        let err = health.readiness(now).unwrap_err();
        assert_eq!(
            err,
            "Pod watch of Pods in all namespaces: down: forbidden\n"
        );

        let guard = health.reconcile_started("RuntimeConfig shop/a".into());
        assert!(health.liveness(now).is_ok());
        assert!(
            health
                .liveness(now + secs(3))
                .unwrap_err()
                .contains("shop/a")
        );
        drop(guard);
        assert!(health.liveness(now + secs(3)).is_ok());
        let l = health.register_loop("RuntimeConfig (all)".into());
        l.beat();
        assert!(
            health
                .liveness(now + secs(10))
                .unwrap_err()
                .contains("heartbeat")
        );
    }
}
