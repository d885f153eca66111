//! The API source: a list-and-watch of the one named ConfigMap (or projected Secret, see
//! [`Followed`]; field selector
//! `metadata.name=NAME`, so a Role limited by `resourceNames` is enough), with reconnects and
//! exponential backoff. It sees a change as soon as the API server stores it, without the
//! kubelet's 60–120 s volume refresh.
//!
//! The loop is written on `Api::list` and `Api::watch` rather than `kube::runtime::watcher`,
//! because the watcher consumes bookmarks and the server's ends of a watch without a trace:
//! a quiet ConfigMap and a dead connection look the same through it. Here every watch carries
//! `timeoutSeconds` ([`WatchBounds::timeout`]) and asks for bookmarks. The server ends the
//! watch at the timeout, so a healthy watch is heard from at least once per timeout even when
//! nothing changes; bookmarks (which kube-apiserver 1.19+ may send about once a minute and
//! just before the timeout, but does not promise — the suite's 1.20 server sent none) only
//! add to that. A watch that ran its course is a confirmed sync like a bookmark: the server
//! had the whole window to deliver a change. Hearing nothing for longer than
//! [`WatchBounds::idle`] means the connection stalled silently: the watch is dropped and the
//! ConfigMap listed again, and every list or watch request is bounded the same way.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::DefaultBackoff;
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use super::health::{self, Restart, SourceHealth};
use super::source::{Origin, Owner, Snapshot, Unreadable, default_key};
use crate::crd::names;
use crate::projection::{META_KEY, Meta};

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
    let chosen = key.map(str::to_string).or_else(|| {
        let described = data.get(META_KEY).and_then(|t| Meta::parse(t).ok());
        default_key(
            data.keys().map(String::as_str),
            described.as_ref().map(|m| m.file_name.as_str()),
        )
    });
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
    stamp(&mut snapshot, cm);
    // The metadata key also says which paths need a restart, and the flags of a format that
    // does not carry them readably, when it describes this key.
    if let Some(meta) = data.get(META_KEY).and_then(|t| Meta::parse(t).ok())
        && meta.file_name == snapshot.key
    {
        snapshot.restart_keys = meta.restart_keys;
        snapshot.flags = meta.feature_flags;
    }
    snapshot
}

/// Stamps a snapshot with what the projected object's annotations and labels say: the
/// revision, the document's hash and the owning CR.
pub fn stamp(snapshot: &mut Snapshot, obj: &impl kube::ResourceExt) {
    let annotations = obj.annotations();
    snapshot.revision = annotations
        .get(names::REVISION)
        .and_then(|r| r.parse().ok());
    snapshot.hash = annotations.get(names::HASH).cloned();
    let labels = obj.labels();
    snapshot.owner = Owner {
        kind: labels.get(names::OWNER_KIND).cloned(),
        name: labels.get(names::OWNER_NAME).cloned(),
    };
}

/// An object the API source follows: a ConfigMap (one data key is the document) or the
/// projected Secret (its values, see [`super::secrets`]).
pub trait Followed:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The kind, for logs and errors.
    const WHAT: &'static str;
    /// The snapshot of this version (`key`: the data key asked for, where one is read).
    fn snapshot(&self, key: Option<&str>) -> Snapshot;
}

impl Followed for ConfigMap {
    const WHAT: &'static str = "ConfigMap";
    fn snapshot(&self, key: Option<&str>) -> Snapshot {
        snapshot_of(self, key)
    }
}

impl Followed for Secret {
    const WHAT: &'static str = "Secret";
    fn snapshot(&self, _key: Option<&str>) -> Snapshot {
        super::secrets::snapshot_of(self)
    }
}

/// The bounds of the API watch (`--watch-timeout`, `--watch-idle-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchBounds {
    /// The `timeoutSeconds` of each watch request: the server ends the watch after this long
    /// and the agent watches again from the last resource version. Whole seconds, at least 1.
    pub timeout: Duration,
    /// How long the source may hear nothing (no list answer, event, bookmark or end of the
    /// watch) before the watch is stalled: dropped, and the ConfigMap listed again. Longer
    /// than `timeout`, so a healthy server always ends the watch before.
    pub idle: Duration,
}

/// The default `timeoutSeconds` of a watch.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How much longer than the watch timeout the idle bound is by default.
pub const IDLE_MARGIN: Duration = Duration::from_secs(15);

impl Default for WatchBounds {
    fn default() -> Self {
        WatchBounds {
            timeout: WATCH_TIMEOUT,
            idle: WATCH_TIMEOUT + IDLE_MARGIN,
        }
    }
}

/// Bounds that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// The watch timeout is under a second (the server counts whole seconds).
    #[error("--watch-timeout must be at least 1s (got {0:?})")]
    TimeoutTooShort(Duration),
    /// The idle bound does not exceed the watch timeout: a healthy, quiet watch would be
    /// taken for a stalled one.
    #[error("--watch-idle-timeout ({idle:?}) must be longer than --watch-timeout ({timeout:?})")]
    IdleNotLonger {
        /// The idle bound given.
        idle: Duration,
        /// The watch timeout given.
        timeout: Duration,
    },
}

impl WatchBounds {
    /// The bounds from the flags: the idle bound defaults to the timeout plus [`IDLE_MARGIN`].
    pub fn new(timeout: Duration, idle: Option<Duration>) -> Result<Self, BoundsError> {
        if timeout < Duration::from_secs(1) {
            return Err(BoundsError::TimeoutTooShort(timeout));
        }
        let idle = idle.unwrap_or(timeout + IDLE_MARGIN);
        if idle <= timeout {
            return Err(BoundsError::IdleNotLonger { idle, timeout });
        }
        Ok(WatchBounds { timeout, idle })
    }

    fn timeout_seconds(&self) -> u32 {
        u32::try_from(self.timeout.as_secs().max(1)).unwrap_or(u32::MAX)
    }
}

/// Watches one ConfigMap (or Secret) through the API server.
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
    /// The watch timeout and the idle bound.
    pub bounds: WatchBounds,
    /// Where the source reports its health (its bound should be `bounds.idle`).
    pub health: health::Shared,
}

/// Why a list-and-watch session ended.
enum End {
    /// Nothing arrived within the idle bound.
    Stalled,
    /// The server said 410 Gone: the resource version is too old.
    Expired,
    /// A request or the watch failed (why).
    Failed(String),
}

impl ApiSource {
    /// Runs until every receiver of `tx` is gone: lists the ConfigMap, then watches it from
    /// the list's resource version with bookmarks and `timeoutSeconds`, watching again each
    /// time the server ends the watch. A failure marks the source down and lists again after
    /// a backoff; a 410 lists again at once; a watch that delivers nothing within the idle
    /// bound is stalled: it is dropped (with its connection) and the ConfigMap listed again.
    pub async fn run(self, tx: watch::Sender<ApiState>) {
        self.follow::<ConfigMap>(tx).await;
    }

    /// [`ApiSource::run`] for any [`Followed`] kind (a projected Secret).
    pub async fn follow<K: Followed>(self, tx: watch::Sender<ApiState>) {
        tx.send_modify(|s| s.health = ApiHealth::Connecting);
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut backoff = DefaultBackoff::default();
        loop {
            let end = tokio::select! {
                _ = tx.closed() => return,
                end = self.session::<K>(&api, &tx, &mut backoff) => end,
            };
            // A stall already waited the whole bound: it lists again at once.
            let (why, wait) = match end {
                End::Expired => {
                    tracing::info!(kind = K::WHAT, name = %self.name, namespace = %self.namespace, "the watch's resource version expired (410); listing again");
                    self.health().restarted(Restart::Expired);
                    continue;
                }
                End::Stalled => {
                    tracing::warn!(kind = K::WHAT, name = %self.name, namespace = %self.namespace, idle = ?self.bounds.idle, "the API watch stalled; dropping it and listing again");
                    self.health().restarted(Restart::Stalled);
                    let why = format!(
                        "stalled: nothing from the API server (no event, bookmark or end of the watch) for {:?}",
                        self.bounds.idle
                    );
                    (why, false)
                }
                End::Failed(why) => {
                    tracing::warn!(kind = K::WHAT, name = %self.name, namespace = %self.namespace, error = %why, "watching the object failed; listing again with backoff");
                    self.health().restarted(Restart::Error);
                    (why, true)
                }
            };
            self.health().failed(why.clone());
            tx.send_if_modified(|s| {
                let was = s.health.clone();
                s.health = ApiHealth::Failing(why);
                !matches!(was, ApiHealth::Failing(_))
            });
            if wait {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, SourceHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    // Waits for `f` until the idle bound runs out (`None`).
    async fn within<F: Future>(&self, f: F) -> Option<F::Output> {
        let deadline = self.health().deadline();
        tokio::time::timeout_at(deadline.into(), f).await.ok()
    }

    /// One list, then watches from its resource version until something goes wrong.
    async fn session<K: Followed>(
        &self,
        api: &Api<K>,
        tx: &watch::Sender<ApiState>,
        backoff: &mut DefaultBackoff,
    ) -> End {
        let fields = format!("metadata.name={}", self.name);
        self.health().heard(Instant::now());
        let list = match self
            .within(api.list(&ListParams::default().fields(&fields)))
            .await
        {
            None => return End::Stalled,
            Some(Err(e)) => return End::Failed(format!("listing the {}: {e}", K::WHAT)),
            Some(Ok(list)) => list,
        };
        let Some(mut version) = list.metadata.resource_version.filter(|v| !v.is_empty()) else {
            return End::Failed("the list has no resourceVersion".into());
        };
        if let Some(obj) = list.items.into_iter().find(|c| c.name_any() == self.name) {
            self.apply(tx, &obj);
        }
        self.health().listed(Instant::now());
        tx.send_if_modified(|s| {
            let healed = s.health != ApiHealth::Synced;
            s.health = ApiHealth::Synced;
            healed
        });
        let params = WatchParams::default()
            .fields(&fields)
            .timeout(self.bounds.timeout_seconds());
        loop {
            let stream = match self.within(api.watch(&params, &version)).await {
                None => return End::Stalled,
                Some(Err(e)) => return End::Failed(format!("watching the {}: {e}", K::WHAT)),
                Some(Ok(stream)) => stream,
            };
            let opened = Instant::now();
            self.health().heard(opened);
            let mut stream = std::pin::pin!(stream);
            let mut delivered = false;
            loop {
                let event = match self.within(stream.next()).await {
                    None => return End::Stalled,
                    Some(None) => break,
                    Some(Some(Err(e))) => return End::Failed(format!("the watch failed: {e}")),
                    Some(Some(Ok(event))) => event,
                };
                delivered = true;
                backoff.reset();
                match event {
                    WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
                        version = obj.resource_version().unwrap_or(version);
                        self.apply(tx, &obj);
                    }
                    WatchEvent::Deleted(obj) => {
                        version = obj.resource_version().unwrap_or(version);
                        tracing::warn!(kind = K::WHAT, name = %self.name, namespace = %self.namespace, "the object was deleted; the last good document stays");
                    }
                    WatchEvent::Bookmark(bookmark) => {
                        tracing::debug!(version = %bookmark.metadata.resource_version, "watch bookmark");
                        version = bookmark.metadata.resource_version;
                    }
                    WatchEvent::Error(e) if e.code == 410 => return End::Expired,
                    WatchEvent::Error(e) => {
                        return End::Failed(format!(
                            "the watch failed: {} ({})",
                            e.message, e.code
                        ));
                    }
                }
                self.health().delivered(Instant::now());
            }
            // The server ended the watch. At its timeout that is the normal cycle; much
            // sooner, with nothing delivered, something in between is closing it.
            let now = Instant::now();
            if !delivered && now.duration_since(opened) < self.bounds.timeout / 2 {
                return End::Failed("the watch was closed early with nothing delivered".into());
            }
            // A watch that ran its course confirms that nothing changed meanwhile, as a
            // bookmark would: the server had the whole window to deliver a change.
            backoff.reset();
            self.health().delivered(now);
            self.health().restarted(Restart::Timeout);
        }
    }

    // Publishes the object's state when it changed.
    fn apply<K: Followed>(&self, tx: &watch::Sender<ApiState>, obj: &K) {
        let snapshot = obj.snapshot(self.key.as_deref());
        tx.send_if_modified(|s| {
            let changed = s.latest.as_ref().map(Snapshot::state) != Some(snapshot.state());
            let healed = s.health != ApiHealth::Synced;
            s.health = ApiHealth::Synced;
            if changed {
                s.observe(snapshot);
            }
            changed || healed
        });
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
    fn the_idle_bound_defaults_past_the_watch_timeout_and_must_exceed_it() {
        let secs = Duration::from_secs;
        assert_eq!(WatchBounds::new(secs(60), None), Ok(WatchBounds::default()));
        assert_eq!(WatchBounds::default().idle, secs(75));
        assert_eq!(
            WatchBounds::new(secs(2), Some(secs(5))).map(|b| (b.timeout_seconds(), b.idle)),
            Ok((2, secs(5)))
        );
        assert_eq!(
            WatchBounds::new(secs(60), Some(secs(60))),
            Err(BoundsError::IdleNotLonger {
                idle: secs(60),
                timeout: secs(60)
            })
        );
        assert_eq!(
            WatchBounds::new(Duration::from_millis(500), None),
            Err(BoundsError::TimeoutTooShort(Duration::from_millis(500)))
        );
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
