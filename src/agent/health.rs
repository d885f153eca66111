//! How each source is doing, as the admin server reports it: a small state machine per source
//! (the API watch, the mounted volume), driven by the source with the times at which things
//! happened. Pure: the caller passes `now`, so the bounds are tested with a fake clock.
//!
//! Two times are kept. The *last confirmed sync* is when the source last proved that what the
//! agent holds is the source's current state: a successful list, a watch event or bookmark, or
//! a watch the server ended at its `timeoutSeconds` (API); a successful read of `..data`
//! (volume). The *last heard* is when the source last showed it is alive at all: that, or a
//! new attempt or watch being opened. A source that has heard nothing for longer than its
//! bound is *stalled*: not up, whatever its last status said. The API source re-establishes
//! its watch when that happens; see [`super::api`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a source last reported about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Started, not synced yet.
    Connecting,
    /// Synced; up while it is heard from within its bound.
    Up,
    /// Failed (why). The API source stays down until its next successful list, the volume
    /// until its next successful read.
    Down(String),
}

/// Why the API source opened a new watch, a label of `hotconf_agent_api_watch_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The server ended the watch at its `timeoutSeconds`: watched again from the last
    /// resource version (the normal cycle; it proves the path every timeout).
    Timeout,
    /// The server answered 410 Gone (the resource version was compacted): listed again.
    Expired,
    /// A request or the watch failed: listed again after a backoff.
    Error,
    /// Nothing (no event, bookmark or end) arrived within the idle bound: the watch was
    /// dropped and the ConfigMap listed again.
    Stalled,
}

impl Restart {
    /// Every reason, in label order.
    pub const ALL: [Restart; 4] = [
        Restart::Timeout,
        Restart::Expired,
        Restart::Error,
        Restart::Stalled,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Restart::Timeout => "timeout",
            Restart::Expired => "expired",
            Restart::Error => "error",
            Restart::Stalled => "stalled",
        }
    }
}

/// One source's health.
#[derive(Clone, Debug)]
pub struct SourceHealth {
    status: Status,
    bound: Duration,
    last_sync: Option<Instant>,
    last_heard: Instant,
    restarts: [u64; Restart::ALL.len()],
}

/// A source's health shared between the source (which drives it) and the admin server (which
/// reads it on each request).
pub type Shared = Arc<Mutex<SourceHealth>>;

/// A new shared health for a source started at `now` that must be heard from within `bound`.
pub fn shared(bound: Duration, now: Instant) -> Shared {
    Arc::new(Mutex::new(SourceHealth::new(bound, now)))
}

impl SourceHealth {
    /// A source started at `now`, stalled if it hears nothing within `bound`.
    pub fn new(bound: Duration, now: Instant) -> Self {
        SourceHealth {
            status: Status::Connecting,
            bound,
            last_sync: None,
            last_heard: now,
            restarts: [0; Restart::ALL.len()],
        }
    }

    /// What the source last reported.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The bound: how long the source may hear nothing before it is stalled.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// A successful list (API) or read (volume): up, and a confirmed sync.
    pub fn listed(&mut self, now: Instant) {
        self.status = Status::Up;
        self.last_sync = Some(now);
        self.last_heard = now;
    }

    /// A watch event, a bookmark, or a watch that ran to its timeout: a confirmed sync while
    /// up. After a failure only a list brings the source back up.
    pub fn delivered(&mut self, now: Instant) {
        if self.status == Status::Up {
            self.last_sync = Some(now);
        }
        self.last_heard = now;
    }

    /// The source is alive but confirmed no data: a new attempt started, or a watch opened.
    /// The bound runs again from `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// The source failed (why).
    pub fn failed(&mut self, reason: impl Into<String>) {
        self.status = Status::Down(reason.into());
    }

    /// Counts a new watch and why it was opened.
    pub fn restarted(&mut self, why: Restart) {
        self.restarts[why as usize] += 1;
    }

    /// How many watches were opened for `why`.
    pub fn restarts(&self, why: Restart) -> u64 {
        self.restarts[why as usize]
    }

    /// When the source becomes stalled if it hears nothing before.
    pub fn deadline(&self) -> Instant {
        self.last_heard + self.bound
    }

    /// Whether the source heard nothing for its whole bound.
    pub fn stalled(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// Whether the source is up: synced, not failed since, and not stalled.
    pub fn up(&self, now: Instant) -> bool {
        self.status == Status::Up && !self.stalled(now)
    }

    /// The last confirmed sync.
    pub fn last_sync(&self) -> Option<Instant> {
        self.last_sync
    }

    /// One line for `/readyz`: `up`, `connecting`, `down: why` or `stalled: ...`.
    pub fn describe(&self, now: Instant) -> String {
        match &self.status {
            Status::Down(why) => format!("down: {why}"),
            _ if self.stalled(now) => format!(
                "stalled: nothing heard for {:.0?}",
                now.saturating_duration_since(self.last_heard)
            ),
            Status::Up => "up".to_string(),
            Status::Connecting => "connecting".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(75);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_source_is_up_from_its_first_sync_until_it_fails() {
        let t0 = Instant::now();
        let mut h = SourceHealth::new(BOUND, t0);
        assert_eq!(h.status(), &Status::Connecting);
        assert!(!h.up(t0));
        assert_eq!(h.last_sync(), None);
        h.listed(t0 + secs(1));
        assert!(h.up(t0 + secs(1)));
        assert_eq!(h.last_sync(), Some(t0 + secs(1)));
        h.delivered(t0 + secs(30));
        assert_eq!(h.last_sync(), Some(t0 + secs(30)));

        h.failed("connection reset");
        assert!(!h.up(t0 + secs(31)), "down at once, not after the bound");
        assert_eq!(h.describe(t0 + secs(31)), "down: connection reset");
        // An event or bookmark does not bring it back, nor count as a sync: only a list does.
        h.delivered(t0 + secs(32));
        assert!(!h.up(t0 + secs(32)));
        assert_eq!(h.last_sync(), Some(t0 + secs(30)));
        h.listed(t0 + secs(40));
        assert!(h.up(t0 + secs(40)));
        assert_eq!(h.last_sync(), Some(t0 + secs(40)));
    }

    #[test]
    fn a_source_heard_from_within_its_bound_stays_up_and_is_stalled_after_it() {
        let t0 = Instant::now();
        let mut h = SourceHealth::new(BOUND, t0);
        h.listed(t0);
        // The server ends each watch at its timeout (60 s), shorter than the bound: every end
        // keeps the source up and confirms that nothing changed; opening the next watch
        // confirms nothing.
        for n in 1..=5 {
            let at = t0 + secs(60 * n);
            assert!(h.up(at - secs(1)), "up before the watch ends ({n})");
            h.delivered(at);
            h.heard(at + Duration::from_millis(5));
            assert_eq!(h.last_sync(), Some(at));
        }
        let last = t0 + secs(300) + Duration::from_millis(5);
        assert!(h.up(last + BOUND - secs(1)));
        assert_eq!(h.deadline(), last + BOUND);
        assert!(h.stalled(last + BOUND));
        assert!(!h.up(last + BOUND), "stalled: nothing for the whole bound");
        assert_eq!(
            h.describe(t0 + secs(300) + BOUND + secs(5)),
            "stalled: nothing heard for 80s"
        );
        // The watch is re-established: a new attempt restarts the bound, the list brings the
        // source back.
        h.failed("stalled");
        h.restarted(Restart::Stalled);
        h.heard(last + BOUND);
        assert!(!h.stalled(last + BOUND + secs(1)));
        assert!(!h.up(last + BOUND + secs(1)), "down until the list");
        h.listed(last + BOUND + secs(2));
        assert!(h.up(last + BOUND + secs(2)));
        assert_eq!(h.restarts(Restart::Stalled), 1);
        assert_eq!(h.restarts(Restart::Timeout), 0);
    }

    #[test]
    fn a_source_that_never_syncs_is_never_up() {
        let t0 = Instant::now();
        let mut h = SourceHealth::new(BOUND, t0);
        h.heard(t0 + secs(10));
        assert!(!h.up(t0 + secs(10)));
        assert_eq!(h.describe(t0 + secs(10)), "connecting");
        assert!(h.stalled(t0 + secs(10) + BOUND));
    }
}
