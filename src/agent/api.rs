//! The API source: a list-and-watch of the one named ConfigMap (field selector
//! `metadata.name=NAME`, so a Role limited by `resourceNames` is enough), with reconnects and
//! exponential backoff. It sees a change as soon as the API server stores it, without the
//! kubelet's 60–120 s volume refresh.

use std::collections::VecDeque;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use super::source::{Origin, Owner, Snapshot, Unreadable, default_key};
use crate::crd::names;

const HISTORY: usize = 64;

/// How the API source is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApiHealth {
    /// There is no API source.
    #[default]
    Disabled,
    /// Started, not listed yet.
    Connecting,
    /// Listed and watching.
    Synced,
    /// The last request failed (it is retried with backoff).
    Failing(String),
}

/// What the API source knows.
#[derive(Clone, Debug, Default)]
pub struct ApiState {
    /// How it is doing.
    pub health: ApiHealth,
    /// The ConfigMap's current content.
    pub latest: Option<Snapshot>,
    /// The states (identity and revision) seen, oldest first (bounded).
    pub history: VecDeque<(String, Option<i64>)>,
    /// The owning CR, from the ConfigMap's labels.
    pub owner: Owner,
}

impl ApiState {
    /// Records a new state of the ConfigMap.
    pub fn observe(&mut self, snapshot: Snapshot) {
        if self.history.back() != Some(&snapshot.state()) {
            self.history.push_back(snapshot.state());
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        if snapshot.owner.kind.is_some() || snapshot.owner.name.is_some() {
            self.owner = snapshot.owner.clone();
        }
        self.latest = Some(snapshot);
    }
}

/// The snapshot of a ConfigMap's data key (`key`, or the default key).
pub fn snapshot_of(cm: &ConfigMap, key: Option<&str>) -> Snapshot {
    let data = cm.data.clone().unwrap_or_default();
    let chosen = key
        .map(str::to_string)
        .or_else(|| default_key(data.keys().map(String::as_str)));
    let keys = || data.keys().cloned().collect::<Vec<_>>().join(", ");
    let text = match &chosen {
        Some(k) => data.get(k).cloned().ok_or_else(|| {
            format!(
                "ConfigMap {} has no data key {k} (keys: {})",
                cm.name_any(),
                keys()
            )
        }),
        None => Err(format!(
            "ConfigMap {} has no data key to choose: pass --file (keys: {})",
            cm.name_any(),
            keys()
        )),
    };
    let mut snapshot = Snapshot::new(
        Origin::Api,
        chosen.unwrap_or_default(),
        text.map_err(Unreadable),
    );
    let annotations = cm.annotations();
    snapshot.revision = annotations
        .get(names::REVISION)
        .and_then(|r| r.parse().ok());
    snapshot.hash = annotations.get(names::HASH).cloned();
    let labels = cm.labels();
    snapshot.owner = Owner {
        kind: labels.get(names::OWNER_KIND).cloned(),
        name: labels.get(names::OWNER_NAME).cloned(),
    };
    snapshot
}

/// Watches one ConfigMap through the API server.
#[derive(Clone)]
pub struct ApiSource {
    /// The client.
    pub client: Client,
    /// The ConfigMap's namespace.
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
    /// The data key; `None`: the only key, else `config.yaml`.
    pub key: Option<String>,
}

impl ApiSource {
    /// Runs until every receiver of `tx` is gone.
    pub async fn run(self, tx: watch::Sender<ApiState>) {
        tx.send_modify(|s| s.health = ApiHealth::Connecting);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    let snapshot = snapshot_of(&cm, self.key.as_deref());
                    tx.send_if_modified(|s| {
                        let changed =
                            s.latest.as_ref().map(Snapshot::state) != Some(snapshot.state());
                        let healed = s.health != ApiHealth::Synced;
                        s.health = ApiHealth::Synced;
                        if changed {
                            s.observe(snapshot);
                        }
                        changed || healed
                    });
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    tracing::warn!(configmap = %self.name, namespace = %self.namespace, "the ConfigMap was deleted; the last good document stays");
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Ok(watcher::Event::InitDone)) => {
                    tx.send_if_modified(|s| {
                        let healed = s.health != ApiHealth::Synced;
                        s.health = ApiHealth::Synced;
                        healed
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(configmap = %self.name, namespace = %self.namespace, error = %e, "watching the ConfigMap failed; retrying with backoff");
                    let message = e.to_string();
                    tx.send_if_modified(|s| {
                        let was = s.health.clone();
                        s.health = ApiHealth::Failing(message);
                        !matches!(was, ApiHealth::Failing(_))
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("app".into()),
                annotations: Some(BTreeMap::from([
                    (names::REVISION.to_string(), "4".to_string()),
                    (names::HASH.to_string(), "abc".to_string()),
                ])),
                labels: Some(BTreeMap::from([
                    (names::OWNER_KIND.to_string(), "RuntimeConfig".to_string()),
                    (names::OWNER_NAME.to_string(), "lazy".to_string()),
                ])),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_carries_annotations_and_owner() {
        let s = snapshot_of(&cm(&[("config.yaml", "a: 1\n"), ("values.a", "1")]), None);
        assert_eq!(s.key, "config.yaml");
        assert_eq!(s.text.as_deref().ok(), Some("a: 1\n"));
        assert_eq!(s.revision, Some(4));
        assert_eq!(s.hash.as_deref(), Some("abc"));
        assert_eq!(s.owner.kind.as_deref(), Some("RuntimeConfig"));
        assert_eq!(s.owner.name.as_deref(), Some("lazy"));
        let missing = snapshot_of(&cm(&[("config.yaml", "a: 1\n")]), Some("app.json"));
        assert!(missing.text.unwrap_err().0.contains("no data key app.json"));
    }

    #[test]
    fn history_is_bounded_and_skips_repeats() {
        let mut state = ApiState::default();
        for i in 0..100 {
            let s = snapshot_of(&cm(&[("config.yaml", &format!("a: {i}\n"))]), None);
            state.observe(s.clone());
            state.observe(s);
        }
        assert_eq!(state.history.len(), HISTORY);
        assert_eq!(state.owner.name.as_deref(), Some("lazy"));
    }
}
