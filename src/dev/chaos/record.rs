//! What the chaos run observes while it runs: every state of the projected ConfigMaps, of the
//! custom resources' status and of the Lease, as watches (straight to kube-apiserver, not
//! through the fault proxy) deliver them.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde::de::DeserializeOwned;

use crate::crd::{PoolBudget, RuntimeConfig, names};
use crate::kinds::ConfigResource;

/// One state of a projected ConfigMap.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProjectedSeen {
    /// The ConfigMap (and its CR's) name.
    pub name: String,
    /// Its `hotconf.dev/revision`.
    pub revision: Option<i64>,
    /// Its `hotconf.dev/hash`.
    pub hash: Option<String>,
    /// When the watch delivered it.
    pub observed: DateTime<Utc>,
    /// Whether its document carries the marker of an invalid spec.
    pub invalid: bool,
}

/// One state of a custom resource's status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusSeen {
    /// The CR's name.
    pub name: String,
    /// `status.latestRevision`.
    pub latest: Option<i64>,
    /// `status.currentRevision`.
    pub current: Option<i64>,
    /// (revision, hash) of every history entry.
    pub history: Vec<(i64, String)>,
    /// `metadata.generation` and `status.observedGeneration`.
    pub generations: (Option<i64>, Option<i64>),
    /// When the watch delivered it.
    pub observed: DateTime<Utc>,
}

/// One state of the Lease.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaseSeen {
    /// Its holder.
    pub holder: Option<String>,
    /// When the holder says it acquired it.
    pub acquired: Option<DateTime<Utc>>,
    /// When the watch delivered this state.
    pub observed: DateTime<Utc>,
}

/// Everything recorded.
#[derive(Clone, Default)]
pub struct Records {
    /// ConfigMap states, in the order seen.
    pub projected: Arc<Mutex<Vec<ProjectedSeen>>>,
    /// Status states, in the order seen.
    pub status: Arc<Mutex<Vec<StatusSeen>>>,
    /// Lease states, in the order seen.
    pub lease: Arc<Mutex<Vec<LeaseSeen>>>,
}

/// Whether a projected document carries the marker an invalid mutation writes: a negative `v`
/// (RuntimeConfig: its schema says `minimum: 0`) or `maxEntries: 0` (PoolBudget: below its
/// bound).
pub fn carries_invalid_marker(document: &serde_json::Value) -> bool {
    match document {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "v" && v.as_i64().is_some_and(|n| n < 0))
                || (k == "maxEntries" && v.as_i64() == Some(0))
                || carries_invalid_marker(v)
        }),
        serde_json::Value::Array(items) => items.iter().any(carries_invalid_marker),
        _ => false,
    }
}

fn projected(cm: &ConfigMap) -> ProjectedSeen {
    let annotation = |key: &str| cm.annotations().get(key).cloned();
    let invalid = cm.data.iter().flatten().any(|(_, text)| {
        serde_json::from_str::<serde_json::Value>(text)
            .map(|doc| carries_invalid_marker(&doc))
            // Not JSON: look for the markers as text.
            .unwrap_or_else(|_| text.contains("\"v\":-") || text.contains("maxEntries\":0"))
    });
    ProjectedSeen {
        name: cm.name_any(),
        revision: annotation(names::REVISION).and_then(|r| r.parse().ok()),
        hash: annotation(names::HASH),
        observed: Utc::now(),
        invalid,
    }
}

fn status<K: ConfigResource>(obj: &K) -> StatusSeen {
    let status = obj.config_status();
    StatusSeen {
        name: obj.name_any(),
        latest: status.and_then(|s| s.latest_revision),
        current: status.and_then(|s| s.current_revision),
        history: status
            .map(|s| {
                s.history
                    .iter()
                    .map(|h| (h.revision, h.hash.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        generations: (
            obj.meta().generation,
            status.and_then(|s| s.observed_generation),
        ),
        observed: Utc::now(),
    }
}

fn watch_into<K, T>(
    api: Api<K>,
    config: watcher::Config,
    into: Arc<Mutex<Vec<T>>>,
    map: fn(&K) -> T,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                into.lock().expect("lock").push(map(&o));
            }
        }
    })
}

fn lease(lease: &Lease) -> LeaseSeen {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseSeen {
        holder: spec.holder_identity,
        acquired: spec
            .acquire_time
            .and_then(|t| DateTime::<Utc>::from_timestamp_micros(t.0.as_microsecond())),
        observed: Utc::now(),
    }
}

impl Records {
    /// Starts the watches of namespace `ns` (and of the Lease `lease_name` in it); they run
    /// until the returned tasks are aborted.
    pub fn watch(
        &self,
        client: &Client,
        ns: &str,
        lease_name: &str,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let managed = watcher::Config::default().labels(&format!("{}=hotconf", names::MANAGED_BY));
        vec![
            watch_into(
                Api::<ConfigMap>::namespaced(client.clone(), ns),
                managed,
                self.projected.clone(),
                projected,
            ),
            watch_into(
                Api::<RuntimeConfig>::namespaced(client.clone(), ns),
                watcher::Config::default(),
                self.status.clone(),
                status::<RuntimeConfig>,
            ),
            watch_into(
                Api::<PoolBudget>::namespaced(client.clone(), ns),
                watcher::Config::default(),
                self.status.clone(),
                status::<PoolBudget>,
            ),
            watch_into(
                Api::<Lease>::namespaced(client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={lease_name}")),
                self.lease.clone(),
                lease,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers_of_invalid_specs_are_found_anywhere_in_a_document() {
        assert!(carries_invalid_marker(&json!({"values": {"v": -3}})));
        assert!(carries_invalid_marker(
            &json!({"pools": {"cache": {"maxEntries": 0}}})
        ));
        assert!(!carries_invalid_marker(&json!({"values": {"v": 3}})));
        assert!(!carries_invalid_marker(
            &json!({"pools": {"cache": {"maxEntries": 7}}})
        ));
    }
}
