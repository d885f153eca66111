//! The client library for applications (SPEC.md §6): a handle on the projected document that
//! follows the mounted ConfigMap (or the API) and swaps in each new version atomically.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hotconf::client::ClientError> {
//! use hotconf::client::Config;
//! let config = Config::watch_dir("/etc/hotconf").await?;
//! let interval: u64 = config.get("check_interval")?;
//! let _sub = config.subscribe("strategy", |v| println!("strategy is now {v:?}"));
//! if config.is_enabled("new_ui", "user-42") { /* ... */ }
//! # let _ = interval; Ok(()) }
//! ```
//!
//! Readers never see a mix of two documents: the current version is an `Arc<Document>` behind
//! a lock that is held only to clone or replace the pointer, so a reader holding a
//! [`Document`] (from [`Config::snapshot`]) reads one whole version however many swaps happen
//! meanwhile. Values resolve in this order: an environment override `HOTCONF_<KEY>` (the key
//! upper-cased, every other character `_`), the projected value (`values.<key>` of a
//! RuntimeConfig document, a dotted path into a PoolBudget document), then a default the
//! application passed with [`Options::default_value`] (the projected document already carries
//! the schema's defaults; these cover keys the schema does not declare).
//!
//! Errors are the client's own [`ClientError`], not the operator's [`crate::Error`]: an
//! application links this module to read its configuration and meets none of the operator's
//! failures (API writes, leader election, webhooks), while the operator never meets a missing
//! key; each variant keeps its cause as a `#[source]` where there is one.

mod budget;
mod cache;
mod document;
mod provider;
mod stats;

pub use document::{Document, Maintenance, env_var};
use document::{EnvLookup, Settings};
pub use provider::{HotconfProvider, ProviderEvent, ProviderEvents};
pub use stats::{ClientStats, MAX_NAMES, OTHER, Source};

pub use budget::{
    Backpressure, Budget, CachePool, DatabasePool, EvictionPolicy, HttpPool, Pools, PressureLevel,
    RedisPool,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::agent::api::{ApiSource, ApiState, WatchBounds};
use crate::agent::check;
use crate::agent::health;
use crate::agent::secrets::{self, Feeds};
use crate::agent::source::Snapshot;
use crate::agent::volume::VolumeSource;
use crate::crd::Format;

/// What can go wrong reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No environment override, projected value or default for the key.
    #[error("no value for {key}: no {env} variable, no projected value, no default")]
    Missing {
        /// The key.
        key: String,
        /// Its environment override's name.
        env: String,
    },
    /// The value does not have the requested type.
    #[error("{key} (from the {from}) does not fit the requested type: {source}")]
    Type {
        /// The key.
        key: String,
        /// Where the value came from: environment, document or default.
        from: &'static str,
        /// The deserialization error.
        #[source]
        source: serde_json::Error,
    },
    /// No good document arrived in time (the last refusal's reason, if any).
    #[error("no valid document within {waited:?}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoDocument {
        /// How long was waited.
        waited: Duration,
        /// Why the last document was refused.
        reason: Option<String>,
    },
    /// The document is not a PoolBudget document.
    #[error("not a PoolBudget document")]
    NotPoolBudget,
}

/// Which kind of CR the document was projected from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `values`, `featureFlags`, `maintenance`.
    RuntimeConfig,
    /// `metrics` and `pools`.
    PoolBudget,
    /// Anything else: keys are dotted paths from the top.
    Other,
}

impl Kind {
    fn of(value: &Value) -> Kind {
        if value.get("metrics").is_some() && value.get("pools").is_some() {
            Kind::PoolBudget
        } else if value.get("values").is_some_and(Value::is_object) {
            Kind::RuntimeConfig
        } else {
            Kind::Other
        }
    }
}

type Callback = Arc<dyn Fn(Option<&Value>) + Send + Sync>;

struct Subscriber {
    id: u64,
    key: String,
    callback: Callback,
}

struct Inner {
    current: RwLock<Arc<Document>>,
    // The document the handle opened with: what the process started on.
    started: Arc<Document>,
    settings: Arc<Settings>,
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: Mutex<u64>,
    version: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().map(std::mem::take).unwrap_or_default() {
            task.abort();
        }
    }
}

/// A handle on the configuration; clones share it. Dropping the last one stops the watch.
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("document", &self.snapshot())
            .finish()
    }
}

/// Keeps a [`Config::subscribe`] callback registered; dropping it unsubscribes.
pub struct Subscription {
    inner: Weak<Inner>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade()
            && let Ok(mut subs) = inner.subscribers.lock()
        {
            subs.retain(|s| s.id != self.id);
            inner.settings.stats.subscribed(-1);
        }
    }
}

/// How to open a [`Config`]: the data key, defaults, how long to wait for the first document.
#[derive(Clone)]
pub struct Options {
    file: Option<String>,
    defaults: BTreeMap<String, Value>,
    env: EnvLookup,
    wait: Duration,
    debounce: Duration,
    secret_dir: Option<PathBuf>,
    api_secret: bool,
    cache_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            secret_dir: None,
            api_secret: false,
            cache_file: None,
            file: None,
            defaults: BTreeMap::new(),
            env: Arc::new(|name| std::env::var(name).ok()),
            wait: Duration::from_secs(30),
            debounce: Duration::from_millis(10),
        }
    }
}

impl Options {
    /// The data key holding the document (default: the only key, else `config.yaml`).
    pub fn file(mut self, key: impl Into<String>) -> Self {
        self.file = Some(key.into());
        self
    }

    /// A default for a key the document may lack.
    pub fn default_value(mut self, key: impl Into<String>, value: impl serde::Serialize) -> Self {
        self.defaults.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Defaults for keys the document may lack.
    pub fn defaults(mut self, defaults: BTreeMap<String, Value>) -> Self {
        self.defaults.extend(defaults);
        self
    }

    /// Where environment overrides are looked up (default: the process environment).
    pub fn env_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// How long `watch_*` waits for the first valid document (default 30 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long the volume must be quiet before a change is read (default 10 ms).
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Also follow the projected Secret mounted at `dir`: sensitive values (`valuesFrom`) are
    /// merged under `values`, so [`Config::get`] finds them. A document that names them is
    /// taken with the Secret version of its own hash only (it waits for it).
    pub fn secret_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.secret_dir = Some(dir.into());
        self
    }

    /// With [`Options::watch_configmap`], also follow the projected Secret of the same name
    /// through the API (the Role needs get, list and watch on it), as [`Options::secret_dir`]
    /// does through the volume.
    pub fn with_secret(mut self) -> Self {
        self.api_secret = true;
        self
    }

    /// Keep the last good document in `file` (JSON, mode 0600: it may hold sensitive values),
    /// written on each swap. A handle that opens while no source gives a valid document within
    /// [`Options::wait`] starts from it instead of failing, says so in
    /// [`Config::last_error`] (and [`Document::is_cached`]), and swaps in the first document a
    /// source then gives.
    pub fn cache_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(file.into());
        self
    }

    // Writes the first document to the cache file, in the background.
    fn persist(&self, doc: &Document) {
        if let Some(file) = self.cache_file.clone() {
            let stored = cache::Stored::of(doc);
            tokio::spawn(async move { cache::write_stored(&file, stored).await });
        }
    }

    fn feeds(&self, api: Option<(&kube::Client, &str, &str)>) -> Feeds {
        let mut feeds = Feeds::default();
        if let Some((client, namespace, name)) = api.filter(|_| self.api_secret) {
            feeds.follow_api(
                client.clone(),
                namespace.to_string(),
                name.to_string(),
                WatchBounds::default(),
            );
        }
        if let Some(dir) = &self.secret_dir {
            feeds.follow_dir(dir.clone(), self.debounce);
        }
        feeds
    }

    fn settings(&self) -> Arc<Settings> {
        Arc::new(Settings {
            defaults: self.defaults.clone(),
            env: self.env.clone(),
            stats: Arc::default(),
        })
    }

    /// A handle on a fixed document (for tests, or documents from elsewhere; see
    /// [`Config::publish`]).
    pub fn from_value(self, value: Value) -> Config {
        let settings = self.settings();
        let doc = document(value, None, None, settings.clone());
        Config::new(doc, settings)
    }

    // The volume source at `dir`, started.
    fn volume(&self, dir: &Path) -> (watch::Receiver<Option<Snapshot>>, AbortHandle) {
        let (tx, rx) = watch::channel(None::<Snapshot>);
        let source = VolumeSource {
            dir: dir.to_path_buf(),
            key: self.file.clone(),
            every_key: false,
            debounce: self.debounce,
            health: health::shared(crate::agent::volume::STALE, std::time::Instant::now()),
        };
        (rx, tokio::spawn(source.run(tx)).abort_handle())
    }

    // The API source of ConfigMap `namespace/name`, started.
    fn api(
        &self,
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> (watch::Receiver<ApiState>, AbortHandle) {
        let (tx, rx) = watch::channel(ApiState::default());
        let source = ApiSource {
            client,
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: self.file.clone(),
            bounds: WatchBounds::default(),
            health: health::shared(WatchBounds::default().idle, std::time::Instant::now()),
        };
        (rx, tokio::spawn(source.run(tx)).abort_handle())
    }

    /// Follows a ConfigMap volume mounted at `dir`; waits for the first valid document.
    pub async fn watch_dir(self, dir: impl AsRef<Path>) -> Result<Config, ClientError> {
        let (rx, task) = self.volume(dir.as_ref());
        let feeds = self.feeds(None);
        self.follow(rx, |s: &Option<Snapshot>| s.clone(), vec![task], feeds)
            .await
    }

    /// Follows ConfigMap `namespace/name` through the API server; waits for the first valid
    /// document.
    pub async fn watch_configmap(
        self,
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Config, ClientError> {
        let feeds = self.feeds(Some((&client, namespace, name)));
        let (rx, task) = self.api(client, namespace, name);
        self.follow(rx, |s: &ApiState| s.latest.clone(), vec![task], feeds)
            .await
    }

    /// Follows ConfigMap `namespace/name` through the API server and its volume at `dir`
    /// together, with the agent's rules ([`crate::agent::arbiter`]): the API is primary, the
    /// volume is used while the API fails or has not listed within 3 s of opening, and content
    /// the API showed before its current state never comes back from the volume.
    pub async fn watch(
        self,
        client: kube::Client,
        namespace: &str,
        name: &str,
        dir: impl AsRef<Path>,
    ) -> Result<Config, ClientError> {
        let feeds = self.feeds(Some((&client, namespace, name)));
        let (api, api_task) = self.api(client, namespace, name);
        let (volume, volume_task) = self.volume(dir.as_ref());
        let (tx, rx) = watch::channel(None::<Snapshot>);
        let arbiter = tokio::spawn(arbitrate(volume, api, tx)).abort_handle();
        self.follow(
            rx,
            |s: &Option<Snapshot>| s.clone(),
            vec![api_task, volume_task, arbiter],
            feeds,
        )
        .await
    }

    async fn follow<T: Send + Sync + 'static>(
        self,
        mut rx: watch::Receiver<T>,
        latest: fn(&T) -> Option<Snapshot>,
        source_tasks: Vec<AbortHandle>,
        mut feeds: Feeds,
    ) -> Result<Config, ClientError> {
        let settings = self.settings();
        let mut reason = None;
        let first = tokio::time::timeout(self.wait, async {
            loop {
                let snapshot = latest(&rx.borrow_and_update());
                if let Some(snapshot) = snapshot {
                    match load(&snapshot, &settings, &feeds) {
                        Ok(doc) => return Some(doc),
                        Err(e) => reason = Some(e),
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return None;
                    },
                    _ = feeds.changed() => {}
                }
            }
        })
        .await;
        let (doc, cached) = match first {
            Ok(Some(doc)) => {
                self.persist(&doc);
                (doc, None)
            }
            _ => {
                let waited = format!(
                    "no source gave a valid document within {:?}{}",
                    self.wait,
                    reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                match self.cache_file.as_deref().map(|f| (f, cache::read(f))) {
                    Some((file, Ok(doc))) => {
                        let why = format!(
                            "serving the last good document cached in {} (revision {}): {waited};                              the sources are still followed",
                            file.display(),
                            doc.revision
                                .map_or("unknown".to_string(), |r| r.to_string())
                        );
                        tracing::warn!(reason = %why, "started from the cache");
                        (document_from_cache(doc, settings.clone()), Some(why))
                    }
                    other => {
                        for task in source_tasks {
                            task.abort();
                        }
                        let reason = match other {
                            Some((file, Err(e))) => Some(format!(
                                "{}; and the cache file {} cannot be used: {e}",
                                reason.unwrap_or_else(|| waited.clone()),
                                file.display()
                            )),
                            _ => reason,
                        };
                        return Err(ClientError::NoDocument {
                            waited: self.wait,
                            reason,
                        });
                    }
                }
            }
        };
        let config = Config::new(doc, settings.clone());
        *config.inner.last_error.lock().expect("not poisoned") = cached;
        let cache_file = self.cache_file.clone();
        let weak = Arc::downgrade(&config.inner);
        let consumer = tokio::spawn(async move {
            loop {
                // A new document, or (for one waiting for its values) a new Secret version.
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return;
                    },
                    _ = feeds.changed() => {}
                }
                let Some(snapshot) = latest(&rx.borrow_and_update()) else {
                    continue;
                };
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                // The same content again is nothing new, unless the handle serves it from the
                // cache: then a source has it now, and says so.
                let current = inner.current();
                if current.identity == snapshot.identity && !current.cached {
                    continue;
                }
                match load(&snapshot, &settings, &feeds) {
                    Ok(doc) => {
                        if let Some(file) = &cache_file {
                            cache::write_stored(file, cache::Stored::of(&doc)).await;
                        }
                        Config { inner }.install(doc)
                    }
                    Err(e) => {
                        tracing::warn!(reason = %e, "refused a new document; the last good one stays");
                        *inner.last_error.lock().expect("not poisoned") = Some(e);
                    }
                }
            }
        })
        .abort_handle();
        config
            .inner
            .tasks
            .lock()
            .expect("not poisoned")
            .extend(source_tasks.into_iter().chain([consumer]));
        Ok(config)
    }
}

fn document(
    value: Value,
    revision: Option<i64>,
    identity: Option<String>,
    settings: Arc<Settings>,
) -> Document {
    let hash = crate::document::hash(&value);
    Document {
        kind: Kind::of(&value),
        identity: identity.unwrap_or_else(|| hash.clone()),
        hash,
        value,
        revision,
        settings,
        restart_keys: Vec::new(),
        cached: false,
    }
}

// A document from the cache file.
fn document_from_cache(stored: cache::Stored, settings: Arc<Settings>) -> Document {
    let mut doc = document(stored.document, stored.revision, stored.identity, settings);
    doc.hash = stored.hash;
    doc.restart_keys = stored.restart_keys;
    doc.cached = true;
    doc
}

// Hands on what the two sources give, with the agent's rules: the API first, the volume while
// the API fails or has not synced yet, never content the API showed before its current state.
async fn arbitrate(
    mut volume: watch::Receiver<Option<Snapshot>>,
    mut api: watch::Receiver<ApiState>,
    tx: watch::Sender<Option<Snapshot>>,
) {
    let mut arbiter = crate::agent::arbiter::Arbiter::new(std::time::Instant::now());
    loop {
        loop {
            let v = volume.borrow_and_update().clone();
            let a = api.borrow_and_update().clone();
            let Some(snapshot) = arbiter.pick(v.as_ref(), &a, std::time::Instant::now()) else {
                break;
            };
            arbiter.handled(&snapshot, true);
            tx.send_replace(Some(snapshot));
        }
        let deadline = arbiter.deadline(&api.borrow(), std::time::Instant::now());
        tokio::select! {
            _ = tx.closed() => return,
            r = volume.changed() => if r.is_err() { return },
            r = api.changed() => if r.is_err() { return },
            _ = crate::agent::sleep_until_some(deadline) => {}
        }
    }
}

// Checks a snapshot as the agent does and makes a document of it, with the sensitive values of
// the Secret version of its hash when a Secret is followed (the hash stays the operator's).
fn load(snapshot: &Snapshot, settings: &Arc<Settings>, feeds: &Feeds) -> Result<Document, String> {
    let text = snapshot.text.as_ref().map_err(|u| u.0.clone())?;
    let format = snapshot.format();
    if !matches!(format, Format::Yaml | Format::Json) {
        return Err(format!(
            "the client library reads YAML or JSON documents, and {} is {format:?}",
            snapshot.key
        ));
    }
    let checked = check::check(text, format, snapshot.hash.as_deref()).map_err(|r| r.0)?;
    let value = checked
        .document
        .expect("YAML and JSON documents are parsed");
    let values = match secrets::named(text, Some(&value), format) {
        true => feeds.values_for(snapshot.hash.as_deref())?,
        false => None,
    };
    let mut doc = document(
        value,
        snapshot.revision,
        Some(snapshot.identity.clone()),
        settings.clone(),
    );
    if let Some(values) = values {
        secrets::merge_value(&mut doc.value, &values)?;
    }
    doc.restart_keys = snapshot.restart_keys.clone();
    Ok(doc)
}

impl Inner {
    fn current(&self) -> Arc<Document> {
        self.current.read().expect("not poisoned").clone()
    }
}

impl Config {
    fn new(doc: Document, settings: Arc<Settings>) -> Config {
        let doc = Arc::new(doc);
        Config {
            inner: Arc::new(Inner {
                started: doc.clone(),
                current: RwLock::new(doc),
                settings,
                subscribers: Mutex::new(Vec::new()),
                next_id: Mutex::new(0),
                version: watch::channel(0).0,
                last_error: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Options for opening a handle.
    pub fn options() -> Options {
        Options::default()
    }

    /// Follows a ConfigMap volume mounted at `dir` (default options).
    pub async fn watch_dir(dir: impl AsRef<Path>) -> Result<Config, ClientError> {
        Options::default().watch_dir(dir).await
    }

    /// Follows ConfigMap `namespace/name` through the API server (default options).
    pub async fn watch_configmap(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Config, ClientError> {
        Options::default()
            .watch_configmap(client, namespace, name)
            .await
    }

    /// A handle on a fixed document (default options).
    pub fn from_value(value: Value) -> Config {
        Options::default().from_value(value)
    }

    /// The keys changed since the handle opened (the process started) whose new value takes
    /// effect only after a restart (`requiresRestart` in the schema), as seed 001's
    /// `get_pending_restart_configs`; empty when none, or when the projection names no restart
    /// keys.
    pub fn pending_restart(&self) -> Vec<String> {
        self.snapshot().restart_pending_since(&self.inner.started)
    }

    /// Whether a restart is needed for changes made since the process started
    /// ([`Config::pending_restart`] is not empty).
    pub fn is_restart_required(&self) -> bool {
        !self.pending_restart().is_empty()
    }

    /// The current document: one whole version, unaffected by later swaps.
    pub fn snapshot(&self) -> Arc<Document> {
        self.inner.current()
    }

    /// Replaces the document (what a watch does on each new version): readers switch from
    /// the old whole document to the new one, and subscribers of changed keys are called.
    pub fn publish(&self, value: Value, revision: Option<i64>) {
        self.install(document(value, revision, None, self.inner.settings.clone()));
    }

    fn install(&self, doc: Document) {
        let new = Arc::new(doc);
        let old = std::mem::replace(
            &mut *self.inner.current.write().expect("not poisoned"),
            new.clone(),
        );
        self.inner.settings.stats.swapped();
        *self.inner.last_error.lock().expect("not poisoned") = None;
        self.inner.version.send_modify(|v| *v += 1);
        let subscribers: Vec<(String, Callback)> = self
            .inner
            .subscribers
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|s| (s.key.clone(), s.callback.clone()))
            .collect();
        // Called outside the lock, so a callback may read the handle or subscribe.
        for (key, callback) in subscribers {
            let before = old.resolve(&key).map(|(v, _, _)| v);
            let after = new.resolve(&key).map(|(v, _, _)| v);
            if before != after {
                callback(after.as_ref());
            }
        }
    }

    /// The value of `key` as `T`: environment override `HOTCONF_<KEY>`, then the projected
    /// value, then the default given in [`Options`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ClientError> {
        self.snapshot().get(key)
    }

    /// Calls `callback` with the new value (or `None` when it is gone) each time the value of
    /// `key` changes, from the task that follows the source. Keep the [`Subscription`].
    pub fn subscribe(
        &self,
        key: &str,
        callback: impl Fn(Option<&Value>) + Send + Sync + 'static,
    ) -> Subscription {
        let id = {
            let mut next = self.inner.next_id.lock().expect("not poisoned");
            *next += 1;
            *next
        };
        self.inner
            .subscribers
            .lock()
            .expect("not poisoned")
            .push(Subscriber {
                id,
                key: key.to_string(),
                callback: Arc::new(callback),
            });
        self.inner.settings.stats.subscribed(1);
        Subscription {
            inner: Arc::downgrade(&self.inner),
            id,
        }
    }

    /// What the application did with its configuration so far: reads (hits per key, misses),
    /// swaps, live subscriptions and flag evaluations by result and reason.
    pub fn stats(&self) -> ClientStats {
        self.inner.settings.stats.counts()
    }

    /// Exposes [`Config::stats`] in the application's Prometheus registry (encoded from the
    /// live counts at each scrape): `hotconf_client_reads_total{key,source}` (source
    /// `environment`, `document`, `default`, or `missing` for a miss),
    /// `hotconf_client_flag_evaluations_total{flag,result,reason}`,
    /// `hotconf_client_swaps_total` and `hotconf_client_subscriptions`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(stats::StatsCollector(
            self.inner.settings.stats.clone(),
        )));
    }

    /// A receiver that changes each time a new document is swapped in (its value counts the
    /// swaps), for applications that prefer to await changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Why the latest document was refused, while the last good one stays in use.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().expect("not poisoned").clone()
    }

    /// What a flag resolves to for a subject, with its variant and reason (see
    /// [`Document::resolve_flag`]).
    pub fn resolve_flag(
        &self,
        flag: &str,
        subject: Option<&str>,
    ) -> Option<crate::feature_flags::Resolution> {
        self.snapshot().resolve_flag(flag, subject)
    }

    /// A flag's value for a subject as `T` (see [`Document::flag_value`]).
    pub fn flag_value<T: DeserializeOwned>(&self, flag: &str, subject: Option<&str>) -> Option<T> {
        self.snapshot().flag_value(flag, subject)
    }

    /// Whether a feature flag is on for a subject.
    pub fn is_enabled(&self, flag: &str, subject: &str) -> bool {
        self.snapshot().is_enabled(flag, subject)
    }

    /// The maintenance switch now.
    pub fn maintenance(&self) -> Maintenance {
        self.snapshot().maintenance()
    }

    /// The resource budget of a PoolBudget document.
    pub fn budget(&self) -> Result<Budget, ClientError> {
        self.snapshot().budget()
    }

    /// The pool settings of a PoolBudget document.
    pub fn pools(&self) -> Result<Pools, ClientError> {
        self.snapshot().pools()
    }

    /// The pressure level for a utilization (0..1).
    pub fn pressure_level(&self, utilization: f64) -> PressureLevel {
        self.snapshot().pressure_level(utilization)
    }

    /// The current document's revision, when known.
    pub fn revision(&self) -> Option<i64> {
        self.snapshot().revision()
    }

    /// The current document's hash.
    pub fn hash(&self) -> String {
        self.snapshot().hash().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::document::env_value;
    use super::*;
    use serde_json::json;

    #[test]
    fn env_names() {
        assert_eq!(env_var("check_interval"), "HOTCONF_CHECK_INTERVAL");
        assert_eq!(
            env_var("pools.database.maxConnections"),
            "HOTCONF_POOLS_DATABASE_MAXCONNECTIONS"
        );
        assert_eq!(env_var("a-b"), "HOTCONF_A_B");
    }

    #[test]
    fn env_text_is_a_scalar_else_a_string() {
        assert_eq!(env_value("30"), json!(30));
        assert_eq!(env_value("true"), json!(true));
        assert_eq!(env_value("[a, b]"), json!(["a", "b"]));
        assert_eq!(env_value("hello world"), json!("hello world"));
        assert_eq!(env_value(""), json!(""));
        assert_eq!(env_value("a: [b"), json!("a: [b"));
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of(&json!({"values": {}})), Kind::RuntimeConfig);
        assert_eq!(
            Kind::of(&json!({"metrics": {}, "pools": {}})),
            Kind::PoolBudget
        );
        assert_eq!(Kind::of(&json!({"a": 1})), Kind::Other);
    }
}
