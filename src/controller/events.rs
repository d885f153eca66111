//! Events (events.k8s.io/v1) as `kubectl describe` should show them: one Event per distinct
//! message, and a repeat of the same message within a few minutes counted in that Event's
//! `series`.
//!
//! kube-runtime's `Recorder` keys its series by type, reason and action only, as client-go's
//! events library does, and keeps the first note: every later `Projected` Event of an object
//! would count up under "revision 1 projected", and a `ValidationFailed` Event would go on
//! listing errors that were fixed. Here the note is part of the key.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

/// How long a message is remembered for a series (kube-runtime's and client-go's figure).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

// What makes two Events the same one: who says it, about what, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
    // apiVersion, kind, namespace, name, uid.
    regarding: [Option<String>; 5],
}

impl Key {
    fn of(ev: &Event, regarding: &ObjectReference) -> Self {
        Key {
            warning: ev.type_ == EventType::Warning,
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
            regarding: [
                regarding.api_version.clone(),
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ],
        }
    }
}

/// Publishes the operator's Events.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    // The Events published within the window, by key.
    recent: Mutex<HashMap<Key, K8sEvent>>,
}

impl Recorder {
    /// A recorder that reports as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            recent: Mutex::default(),
        }
    }

    /// Publishes `ev` about `regarding`: a new Event, or the next of a series when the same
    /// message was published within the window (a new Event if that one is gone).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = Key::of(ev, regarding);
        let repeated = {
            let mut recent = self.recent.lock().await;
            recent.retain(|_, e| last_seen(e).is_some_and(|t| t + SERIES_WINDOW > now));
            recent.get(&key).map(|e| repeat(e, now))
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        // The next of a series, unless that Event is gone: then it starts again.
        let patched = match repeated {
            Some(event) => match events
                .patch(
                    &event.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&event),
                )
                .await
            {
                Ok(_) => Some(event),
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let event = match patched {
            Some(event) => event,
            None => {
                let event = self.first(ev, regarding, now);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent.lock().await.insert(key, event);
        Ok(())
    }

    // The first Event of a message.
    fn first(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

// When an Event was last observed.
fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    match &e.series {
        Some(series) => Some(series.last_observed_time.0),
        None => e.event_time.as_ref().map(|t| t.0),
    }
}

// `e` observed once more at `now`.
fn repeat(e: &K8sEvent, now: Timestamp) -> K8sEvent {
    let count = e.series.as_ref().map_or(2, |s| s.count + 1);
    K8sEvent {
        series: Some(EventSeries {
            count,
            last_observed_time: MicroTime(now),
        }),
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Project".into(),
            secondary: None,
        }
    }

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("hotconf.dev/v1alpha1".into()),
            kind: Some("RuntimeConfig".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_same_message_about_the_same_object_is_one_event() {
        let a = Key::of(&event("Projected", "revision 1"), &object("a"));
        assert_eq!(a, Key::of(&event("Projected", "revision 1"), &object("a")));
        assert_ne!(a, Key::of(&event("Projected", "revision 2"), &object("a")));
        assert_ne!(a, Key::of(&event("Projected", "revision 1"), &object("b")));
        assert_ne!(a, Key::of(&event("RolledBack", "revision 1"), &object("a")));
        let mut warning = event("Projected", "revision 1");
        warning.type_ = EventType::Warning;
        assert_ne!(a, Key::of(&warning, &object("a")));
    }

    #[test]
    fn a_repeat_counts_up_the_series_and_keeps_the_note() {
        let t0 = Timestamp::UNIX_EPOCH;
        let first = K8sEvent {
            note: Some("revision 1".into()),
            event_time: Some(MicroTime(t0)),
            ..Default::default()
        };
        assert_eq!(last_seen(&first), Some(t0));
        let t1 = t0 + SignedDuration::from_secs(10);
        let second = repeat(&first, t1);
        assert_eq!(second.series.as_ref().map(|s| s.count), Some(2));
        assert_eq!(last_seen(&second), Some(t1));
        let third = repeat(&second, t1 + SignedDuration::from_secs(1));
        assert_eq!(third.series.as_ref().map(|s| s.count), Some(3));
        assert_eq!(third.note, first.note);
        assert_eq!(third.event_time, first.event_time);
    }
}
