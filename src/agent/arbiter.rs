//! Which snapshot to hand on next when two sources feed the agent. Pure: the state of each
//! source goes in, a decision comes out.
//!
//! The API watch is primary: it sees a change the moment the API server stores it, while the
//! kubelet refreshes a volume 60–120 s later. The volume is used only when there is no API
//! source, when the API source is failing, or when it has not synced within a grace period after
//! start. Nothing ever goes backwards: content the API source showed before its current state is
//! stale and never applied from the volume; a state (content and revision) that was applied or
//! refused is not handled twice, except the one handed on when it shows again after a refusal:
//! handling it again is a no-op hand-off that clears the refusal's error from the report.

use std::time::{Duration, Instant};

use super::api::{ApiHealth, ApiState};
use super::source::{Origin, Snapshot, State};

/// How long the volume waits for a starting API source before it is used on its own.
pub const API_GRACE: Duration = Duration::from_secs(3);

/// The agent's memory of what it handed on and what each source showed it last.
#[derive(Debug)]
pub struct Arbiter {
    applied: Option<State>,
    handled_api: Option<State>,
    handled_volume: Option<State>,
    // A source's state was refused (or could not be handed on) since the last one applied.
    refused_since: bool,
    grace_until: Instant,
}

impl Arbiter {
    /// An arbiter for an agent started at `start`.
    pub fn new(start: Instant) -> Self {
        Arbiter {
            applied: None,
            handled_api: None,
            handled_volume: None,
            refused_since: false,
            grace_until: start + API_GRACE,
        }
    }

    /// Records that `snapshot` was handled: handed on (`applied`) or refused. A source's
    /// state is handled once; the same content coming back later, after other content, is a
    /// new state and is handled again.
    pub fn handled(&mut self, snapshot: &Snapshot, applied: bool) {
        let id = Some(snapshot.state());
        match snapshot.origin {
            Origin::Api => self.handled_api = id.clone(),
            Origin::Volume => self.handled_volume = id.clone(),
        }
        if applied {
            self.applied = id;
        }
        self.refused_since = !applied;
    }

    /// The identity of the content handed on last.
    pub fn current(&self) -> Option<&str> {
        self.applied.as_ref().map(|(id, _)| id.as_str())
    }

    /// Whether the volume may be used now.
    pub fn volume_allowed(&self, api: &ApiState, now: Instant) -> bool {
        match api.health {
            ApiHealth::Disabled | ApiHealth::Failing(_) => true,
            ApiHealth::Connecting => now >= self.grace_until,
            ApiHealth::Synced => false,
        }
    }

    /// When to look again although no source changed: the end of the start-up grace period.
    pub fn deadline(&self, api: &ApiState, now: Instant) -> Option<Instant> {
        (api.health == ApiHealth::Connecting && now < self.grace_until).then_some(self.grace_until)
    }

    /// The snapshot to hand on next, if any. The API source's latest state comes first; a
    /// volume snapshot is picked only when the volume may be used and its content is not one
    /// the API source has shown (that content is either the API's own latest, handled above,
    /// or older than it; a volume that names its revision is compared by content and revision).
    ///
    /// An API state equal to the one handed on (the volume brought it first) counts as handled
    /// by the API too: otherwise, once the volume hands on something newer while the API is
    /// down, that older API state would look unhandled and be applied again, backwards.
    ///
    /// The state handed on, shown again by a source after a refusal (a hand-edited ConfigMap
    /// the operator put back), is picked once more: the agent applies what it has, and says so.
    pub fn pick(
        &mut self,
        volume: Option<&Snapshot>,
        api: &ApiState,
        now: Instant,
    ) -> Option<Snapshot> {
        if let Some(latest) = &api.latest {
            let state = Some(latest.state());
            if self.handled_api != state {
                if self.applied != state || self.refused_since {
                    return Some(latest.clone());
                }
                self.handled_api = state;
            }
        }
        let volume = volume?;
        let state = Some(volume.state());
        let back = self.applied == state && self.refused_since;
        if back && self.handled_volume != state && self.volume_allowed(api, now) {
            return Some(volume.clone());
        }
        if self.handled_volume == state
            || self.applied == state
            || !self.volume_allowed(api, now)
            || api.history.iter().any(|(id, revision)| {
                *id == volume.identity
                    && (volume.revision.is_none() || *revision == volume.revision)
            })
        {
            return None;
        }
        let mut chosen = volume.clone();
        if chosen.owner.kind.is_none() {
            chosen.owner = api.owner.clone();
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::source::Origin;

    fn snap(origin: Origin, text: &str, revision: Option<i64>) -> Snapshot {
        let mut s = Snapshot::new(origin, "config.yaml", Ok(text.to_string()));
        s.revision = revision;
        s
    }

    fn api(health: ApiHealth, seen: &[(&str, i64)]) -> ApiState {
        let mut state = ApiState {
            health,
            ..ApiState::default()
        };
        for (text, rev) in seen {
            state.observe(snap(Origin::Api, text, Some(*rev)));
        }
        state
    }

    #[test]
    fn volume_alone_is_applied_once() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let none = ApiState::default();
        let v = snap(Origin::Volume, "a: 1\n", None);
        let picked = a.pick(Some(&v), &none, t0).unwrap();
        assert_eq!(picked.origin, Origin::Volume);
        a.handled(&picked, true);
        assert!(a.pick(Some(&v), &none, t0).is_none(), "unchanged content");
        let bad = snap(Origin::Volume, "a: [\n", None);
        a.handled(&bad, false);
        assert!(a.pick(Some(&bad), &none, t0).is_none(), "refused once");
        assert_eq!(a.current(), Some(v.identity.as_str()));
        // The same bad content coming back after other content is a new state.
        let other = snap(Origin::Volume, "a: 2\n", None);
        a.handled(&other, true);
        assert!(a.pick(Some(&bad), &none, t0).is_some());
    }

    #[test]
    fn the_same_content_under_a_new_revision_is_a_new_state() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let none = ApiState::default();
        // An old ConfigMap without the metadata key, then the operator adds it.
        let unknown = snap(Origin::Volume, "a: 1\n", None);
        let picked = a.pick(Some(&unknown), &none, t0).unwrap();
        a.handled(&picked, true);
        let known = snap(Origin::Volume, "a: 1\n", Some(3));
        let picked = a.pick(Some(&known), &none, t0).expect("a new state");
        assert_eq!(picked.revision, Some(3));
        a.handled(&picked, true);
        assert!(a.pick(Some(&known), &none, t0).is_none(), "handled once");
        assert_eq!(a.current(), Some(known.identity.as_str()));
        // Through the API: a rollback to a revision with the same document.
        let state = api(ApiHealth::Synced, &[("a: 1\n", 3), ("a: 1\n", 1)]);
        assert_eq!(a.pick(None, &state, t0).unwrap().revision, Some(1));
    }

    #[test]
    fn api_is_primary_and_volume_waits_for_the_grace_period() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let v = snap(Origin::Volume, "a: 1\n", None);
        let connecting = api(ApiHealth::Connecting, &[]);
        assert!(a.pick(Some(&v), &connecting, t0).is_none());
        assert_eq!(a.deadline(&connecting, t0), Some(t0 + API_GRACE));
        assert!(a.pick(Some(&v), &connecting, t0 + API_GRACE).is_some());
        let synced = api(ApiHealth::Synced, &[("a: 2\n", 2)]);
        assert_eq!(
            a.pick(Some(&v), &synced, t0).unwrap().origin,
            Origin::Api,
            "the API's content wins"
        );
    }

    #[test]
    fn volume_is_the_fallback_but_never_goes_backwards() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let mut state = api(ApiHealth::Synced, &[("a: 1\n", 1), ("a: 2\n", 2)]);
        let applied = a.pick(None, &state, t0).unwrap();
        assert_eq!(applied.revision, Some(2));
        a.handled(&applied, true);
        state.health = ApiHealth::Failing("connection refused".into());
        // The kubelet still shows revision 1: stale.
        let old = snap(Origin::Volume, "a: 1\n", None);
        assert!(a.pick(Some(&old), &state, t0).is_none());
        // Content the API never showed is newer: applied from the volume.
        let new = snap(Origin::Volume, "a: 3\n", None);
        assert_eq!(
            a.pick(Some(&new), &state, t0).unwrap().origin,
            Origin::Volume
        );
        // Same content as the API's latest: already applied (with or without its revision).
        let same = snap(Origin::Volume, "a: 2\n", None);
        assert!(a.pick(Some(&same), &state, t0).is_none());
        let same = snap(Origin::Volume, "a: 2\n", Some(2));
        assert!(a.pick(Some(&same), &state, t0).is_none());
        // The kubelet still shows revision 1, and says so: stale too.
        let old = snap(Origin::Volume, "a: 1\n", Some(1));
        assert!(a.pick(Some(&old), &state, t0).is_none());
        // While the API is healthy the volume is not consulted.
        state.health = ApiHealth::Synced;
        assert!(a.pick(Some(&new), &state, t0).is_none());
    }

    /// Found by CI on a slow machine: the volume handed revision 1 on before the API synced
    /// (grace period over), the API then showed the same revision 1; during an outage the
    /// volume brought revision 2. Revision 1 from the API must not be applied again.
    #[test]
    fn an_api_state_the_volume_brought_first_is_not_applied_again_later() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let v1 = snap(Origin::Volume, "a: 1\n", Some(1));
        let connecting = api(ApiHealth::Connecting, &[]);
        let picked = a.pick(Some(&v1), &connecting, t0 + API_GRACE).unwrap();
        a.handled(&picked, true);
        let mut state = api(ApiHealth::Synced, &[("a: 1\n", 1)]);
        assert!(a.pick(Some(&v1), &state, t0 + API_GRACE).is_none());
        state.health = ApiHealth::Failing("connection refused".into());
        let v2 = snap(Origin::Volume, "a: 2\n", Some(2));
        let picked = a.pick(Some(&v2), &state, t0 + API_GRACE).unwrap();
        assert_eq!(picked.revision, Some(2));
        a.handled(&picked, true);
        assert!(
            a.pick(Some(&v2), &state, t0 + API_GRACE).is_none(),
            "revision 1 from the API is older than what was handed on"
        );
        // Healed: the API lists revision 2, already applied; then revision 3 is new.
        state.health = ApiHealth::Synced;
        state.observe(snap(Origin::Api, "a: 2\n", Some(2)));
        assert!(a.pick(Some(&v2), &state, t0 + API_GRACE).is_none());
        state.observe(snap(Origin::Api, "a: 3\n", Some(3)));
        assert_eq!(a.pick(Some(&v2), &state, t0).unwrap().revision, Some(3));
    }

    /// Found by an acceptance run: the ConfigMap edited by hand (refused), then put back by the
    /// operator. The document handed on is picked again, so that the refusal's error goes.
    #[test]
    fn the_applied_state_shown_again_after_a_refusal_is_picked_once() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let mut state = api(ApiHealth::Synced, &[("a: 1\n", 2)]);
        let good = a.pick(None, &state, t0).unwrap();
        a.handled(&good, true);
        state.observe(snap(Origin::Api, "tampered: true\n", Some(2)));
        let tampered = a.pick(None, &state, t0).unwrap();
        a.handled(&tampered, false);
        state.observe(snap(Origin::Api, "a: 1\n", Some(2)));
        let again = a.pick(None, &state, t0).expect("the good state again");
        assert_eq!(again.identity, good.identity);
        a.handled(&again, true);
        assert!(a.pick(None, &state, t0).is_none(), "once");

        // The same through a volume on its own.
        let mut a = Arbiter::new(t0);
        let none = ApiState::default();
        let v = snap(Origin::Volume, "a: 1\n", Some(2));
        let good = a.pick(Some(&v), &none, t0).unwrap();
        a.handled(&good, true);
        let bad = snap(Origin::Volume, "a: [\n", Some(2));
        let refused = a.pick(Some(&bad), &none, t0).unwrap();
        a.handled(&refused, false);
        let again = a.pick(Some(&v), &none, t0).expect("the good state again");
        a.handled(&again, true);
        assert!(a.pick(Some(&v), &none, t0).is_none(), "once");
    }

    #[test]
    fn content_refused_from_the_api_is_refused_from_the_volume() {
        let t0 = Instant::now();
        let state = api(ApiHealth::Failing("x".into()), &[("a: 1\n", 7)]);
        let mut a = Arbiter::new(t0);
        a.handled(state.latest.as_ref().unwrap(), false);
        let v = snap(Origin::Volume, "a: 1\n", None);
        assert!(a.pick(Some(&v), &state, t0).is_none());
    }
}
