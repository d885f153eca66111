//! The consumer pods: one watch per scope, shared by both kinds' controllers, reduced on arrival
//! to what consumer status reads (labels, the agent's report, readiness, restarts). A pod's
//! change reconciles the CRs whose `spec.rollout.consumerSelector` selects it, at once: an
//! agent's report or a pod getting hurt reaches the rollout decision without polling.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt as _, stream::BoxStream};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt as _, runtime::watcher};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::health::{self, Health, WatchKind};
use crate::rollout::Consumer;

/// One pod watch: the namespace it covers (`None`: all) and its events.
pub(crate) type PodWatch = (
    Option<String>,
    BoxStream<'static, watcher::Result<watcher::Event<Pod>>>,
);

/// What is kept of a pod.
#[derive(Clone, Debug, PartialEq)]
struct CachedPod {
    labels: BTreeMap<String, String>,
    consumer: Consumer,
    // Terminating pods are no longer consumers (their replacement is).
    terminating: bool,
}

impl CachedPod {
    fn of(pod: &Pod) -> CachedPod {
        CachedPod {
            labels: pod.labels().clone(),
            consumer: Consumer::from_pod(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// A pod changed (appeared, changed, went): its namespace and labels (before and after).
#[derive(Clone, Debug)]
pub(crate) struct PodChange {
    /// The pod's namespace.
    pub namespace: String,
    /// Its labels, as they were and as they are (a relabelled pod leaves one selector and may
    /// join another).
    pub labels: Vec<BTreeMap<String, String>>,
}

type Namespaces = HashMap<String, BTreeMap<String, CachedPod>>;

/// The pods of the operator's scope, as consumer status reads them.
pub(crate) struct PodCache {
    pods: RwLock<Namespaces>,
    changes: broadcast::Sender<PodChange>,
    synced: watch::Receiver<bool>,
    // Why the watch is not (yet) synced, for the reconcile that has to wait.
    last_error: RwLock<Option<String>>,
}

/// Why consumers cannot be counted yet.
#[derive(Debug, thiserror::Error)]
#[error("the pod watch has not synced yet{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct PodsNotSynced(pub Option<String>);

impl PodCache {
    /// Starts following `watches` (one per namespace, or one for all); the returned future
    /// drives them and must be polled.
    pub(crate) fn start(
        watches: Vec<PodWatch>,
    ) -> (Arc<PodCache>, impl std::future::Future<Output = ()> + Send) {
        let (changes, _) = broadcast::channel(1024);
        let (synced_tx, synced) = watch::channel(watches.is_empty());
        let cache = Arc::new(PodCache {
            pods: RwLock::new(HashMap::new()),
            changes,
            synced,
            last_error: RwLock::new(None),
        });
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(watches.len()));
        let watches = watches.into_iter().map(|(namespace, mut events)| {
            let cache = cache.clone();
            let (synced_tx, pending) = (synced_tx.clone(), pending.clone());
            async move {
                let mut relist: Option<Namespaces> = None;
                let mut synced_once = false;
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
                        Ok(watcher::Event::InitApply(pod)) => {
                            if let Some(buffer) = relist.as_mut() {
                                buffer
                                    .entry(pod.namespace().unwrap_or_default())
                                    .or_default()
                                    .insert(pod.name_any(), CachedPod::of(&pod));
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            cache.replace(namespace.as_deref(), relist.take().unwrap_or_default());
                            *cache.last_error.write().expect("lock") = None;
                            if !synced_once {
                                synced_once = true;
                                if pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                                    synced_tx.send_replace(true);
                                }
                            }
                        }
                        Ok(watcher::Event::Apply(pod)) => cache.upsert(&pod),
                        Ok(watcher::Event::Delete(pod)) => cache.remove(&pod),
                        Err(e) => {
                            // The supervised watch backs off and lists afresh.
                            warn!(error = %e, "pod watch failed; retrying");
                            *cache.last_error.write().expect("lock") = Some(e.to_string());
                        }
                    }
                }
            }
        });
        let run = futures::future::join_all(watches.collect::<Vec<_>>());
        (cache, async move {
            run.await;
        })
    }

    fn send(&self, namespace: &str, labels: Vec<BTreeMap<String, String>>) {
        // No receiver yet (no controller subscribed): nothing to tell.
        let _ = self.changes.send(PodChange {
            namespace: namespace.to_string(),
            labels,
        });
    }

    fn upsert(&self, pod: &Pod) {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut new = CachedPod::of(pod);
        let old = {
            let mut pods = self.pods.write().expect("lock");
            let in_ns = pods.entry(ns.clone()).or_default();
            new.consumer
                .carry_baseline(in_ns.get(&name).map(|p| &p.consumer));
            if in_ns.get(&name) == Some(&new) {
                // Nothing consumer status reads changed (most pod status updates).
                return;
            }
            in_ns.insert(name, new.clone())
        };
        let mut labels = vec![new.labels];
        labels.extend(old.map(|o| o.labels).filter(|l| *l != labels[0]));
        self.send(&ns, labels);
    }

    fn remove(&self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let old = {
            let mut pods = self.pods.write().expect("lock");
            let old = pods.get_mut(&ns).and_then(|p| p.remove(&pod.name_any()));
            if pods.get(&ns).is_some_and(BTreeMap::is_empty) {
                pods.remove(&ns);
            }
            old
        };
        if let Some(old) = old {
            self.send(&ns, vec![old.labels]);
        }
    }

    // A relist: what it found replaces what the watch of `namespace` (or of all) knew; every pod
    // that appeared, changed or went is told.
    fn replace(&self, namespace: Option<&str>, mut found: Namespaces) {
        let mut told = Vec::new();
        {
            let mut pods = self.pods.write().expect("lock");
            let old: Namespaces = match namespace {
                Some(ns) => pods
                    .remove(ns)
                    .map(|p| HashMap::from([(ns.to_string(), p)]))
                    .unwrap_or_default(),
                None => std::mem::take(&mut *pods),
            };
            // Gone, or relabelled (the selectors of its old labels are told too).
            for (ns, was) in &old {
                let now = found.get(ns);
                for (name, pod) in was {
                    if now
                        .and_then(|n| n.get(name))
                        .is_none_or(|p| p.labels != pod.labels)
                    {
                        told.push((ns.clone(), pod.labels.clone()));
                    }
                }
            }
            for (ns, now) in found.iter_mut() {
                let was = old.get(ns);
                for (name, pod) in now.iter_mut() {
                    pod.consumer
                        .carry_baseline(was.and_then(|w| w.get(name)).map(|p| &p.consumer));
                }
            }
            for (ns, now) in &found {
                let was = old.get(ns);
                for (name, pod) in now {
                    if was.and_then(|w| w.get(name)) != Some(pod) {
                        told.push((ns.clone(), pod.labels.clone()));
                    }
                }
            }
            found.retain(|_, p| !p.is_empty());
            pods.extend(found);
        }
        for (ns, labels) in told {
            self.send(&ns, vec![labels]);
        }
    }

    /// The consumers in `namespace` that `selector` selects (terminating pods left out), once
    /// the watch has synced.
    pub(crate) fn select(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Consumer>, PodsNotSynced> {
        if !*self.synced.borrow() {
            return Err(PodsNotSynced(self.last_error.read().expect("lock").clone()));
        }
        let pods = self.pods.read().expect("lock");
        Ok(pods
            .get(namespace)
            .into_iter()
            .flat_map(|p| p.values())
            .filter(|p| !p.terminating && selects(selector, &p.labels))
            .map(|p| p.consumer.clone())
            .collect())
    }

    /// Pod changes from now on. A receiver that falls behind is told `None`: anything may have
    /// changed.
    pub(crate) fn changes(&self) -> impl Stream<Item = Option<PodChange>> + Send + 'static {
        futures::stream::unfold(self.changes.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(change) => Some((Some(change), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }
}

/// Whether `selector` (matchLabels) selects a pod with `labels`. An empty selector selects
/// every pod, as a Kubernetes label selector does.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One supervised pod watch per namespace of the scope, or one for all.
pub(crate) fn pod_watches(
    client: &Client,
    namespaces: &[String],
    health: &Arc<Health>,
) -> Vec<PodWatch> {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    scopes
        .into_iter()
        .map(|namespace| {
            let name = match &namespace {
                Some(n) => format!("Pods in {n}"),
                None => "Pods in all namespaces".into(),
            };
            let events = health
                .watch(
                    WatchKind::Pod,
                    name,
                    client,
                    |c| match &namespace {
                        Some(n) => Api::<Pod>::namespaced(c, n),
                        None => Api::all(c),
                    },
                    watcher::Config::default(),
                    health::parse,
                )
                .boxed();
            (namespace, events)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, app: &str, annotation: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app},
                "annotations": annotation.map(|a| serde_json::json!({"hotconf.dev/applied": a})).unwrap_or_default()},
        }))
        .unwrap()
    }

    fn cache() -> Arc<PodCache> {
        let (cache, _) = PodCache::start(Vec::new());
        cache
    }

    #[tokio::test]
    async fn pods_are_selected_by_namespace_and_labels_and_changes_are_told() {
        let cache = cache();
        let mut changes = Box::pin(cache.changes());
        cache.upsert(&pod("shop", "web-1", "web", Some(r#"{"revision":2}"#)));
        cache.upsert(&pod("shop", "db-1", "db", None));
        cache.upsert(&pod("other", "web-1", "web", None));
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let selected = cache.select("shop", &web).unwrap();
        assert_eq!(selected.len(), 1);
        assert_eq!(
            (selected[0].pod.as_str(), selected[0].revision),
            ("web-1", Some(2))
        );
        let first = changes.next().await.unwrap().unwrap();
        assert_eq!(first.namespace, "shop");

        // The same pod again (a status update consumer status does not read): nothing told.
        cache.upsert(&pod("shop", "web-1", "web", Some(r#"{"revision":2}"#)));
        // Relabelled: both label sets are told.
        cache.upsert(&pod("shop", "web-1", "canary", Some(r#"{"revision":2}"#)));
        let _db = changes.next().await;
        let _other = changes.next().await;
        let moved = changes.next().await.unwrap().unwrap();
        assert_eq!(moved.labels.len(), 2);
        assert!(cache.select("shop", &web).unwrap().is_empty());

        cache.remove(&pod("shop", "web-1", "canary", None));
        let gone = changes.next().await.unwrap().unwrap();
        assert_eq!(gone.labels[0]["app"], "canary");
        assert!(selects(&BTreeMap::new(), &BTreeMap::new()));
    }

    #[test]
    fn a_relist_tells_what_changed_while_the_watch_was_away() {
        let cache = cache();
        cache.upsert(&pod("shop", "a", "web", None));
        cache.upsert(&pod("shop", "b", "web", None));
        let mut rx = cache.changes.subscribe();
        let mut found: Namespaces = HashMap::new();
        let b = pod("shop", "b", "web", Some(r#"{"revision":3}"#));
        found
            .entry("shop".into())
            .or_default()
            .insert("b".into(), CachedPod::of(&b));
        cache.replace(None, found);
        let mut told = 0;
        while rx.try_recv().is_ok() {
            told += 1;
        }
        assert_eq!(told, 2, "a went, b changed");
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert_eq!(cache.select("shop", &web).unwrap()[0].revision, Some(3));
    }
}
