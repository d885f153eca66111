//! The pod-side agent (`hotconf agent`, SPEC.md §6): it follows a projected ConfigMap through
//! the mounted volume and/or an API watch, checks each new document, hands the good ones to the
//! application (atomic write, then a reload URL, a signal or a command), keeps the last good one
//! when a bad one arrives, and reports what it applied on its own Pod and in its metrics.
//!
//! The pieces: [`source`] (what a source hands on), [`volume`] and [`api`] (the two sources),
//! [`arbiter`] (which source wins), [`check`] (parse and hash checks, `${VAR}` expansion),
//! [`handoff`] (write and notify), [`report`] (the Pod annotation), [`health`] (each source's
//! health and staleness), [`metrics`] (metrics and the admin server). The client library
//! (`crate::client`) reuses the sources and the checks.
//!
//! Choices where SPEC.md is silent:
//! - A document is identified by the SHA-256 of its text: the same content through either
//!   source is handed on once, and a swap that changes nothing does nothing.
//! - With both sources the API is primary. The volume is used while the API source fails, or
//!   if it has not listed the ConfigMap within 3 s of start; content the API source showed
//!   before its current state is never applied from the volume (it lags behind), so nothing
//!   goes backwards. A rollback the operator projects is the API's current state and is applied.
//! - The volume has no annotations: the revision, hash and owner come from the metadata key the
//!   operator projects beside the document (`projection::META_KEY`), read from the same
//!   `..data` directory, and the hash is checked as the annotation's is. Without that key (an
//!   older operator) the revision is unknown.
//! - Properties and env documents cannot be parsed back into typed values, so their hash cannot
//!   be recomputed: they get a syntax check and the annotation is reported as their hash.
//! - The reload POST carries `{"revision", "hash", "file"}` as JSON; `--exec` gets
//!   `HOTCONF_REVISION`, `HOTCONF_HASH` and `HOTCONF_OUTPUT`.
//! - A notification that still fails after its retries leaves the new file in place, is
//!   counted (`notify_failed`) and reported in the annotation's `error`; the next new document
//!   is handed on as usual.
//! - `/readyz` is 200 from the first document handed on (written; a failed notification does
//!   not undo it) and stays 200 while the agent keeps that last good document, even when
//!   later ones are refused: the application still runs on a good configuration, and taking
//!   every pod out of its Service because the operator projected one bad revision would turn
//!   a refused document into an outage. Until then it is 503 with the reason.
//! - The sources' staleness is in metrics, not in readiness ([`health`]): an API server
//!   outage must not make every pod unready either. A stalled API watch is re-established.
//! - Sensitive values come from the projected Secret ([`secrets`]), through the API
//!   (`--secret`) and/or its mounted volume (`--secret-dir`). A document that names them is
//!   handed on with the Secret version stamped with its hash, merged under `values` (the output
//!   then has mode 0600) or written to `--secrets-output`; until that version arrives it waits
//!   (reported as not handed on). Without a Secret source the document is handed on as
//!   projected, without them, as before.
//! - At start, an output file that already holds the document (a restarted sidecar) is not
//!   rewritten and the application is not notified again. Nor is it when the content handed on
//!   last comes again under another revision (a rollback to an equal document, the metadata
//!   key appearing after an operator upgrade): the new revision is only reported.

pub mod api;
pub mod arbiter;
pub mod check;
pub mod handoff;
pub mod health;
pub mod metrics;
pub mod ofrep;
pub mod report;
pub mod secrets;
pub mod source;
pub mod state;
pub mod volume;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::watch;

use api::{ApiHealth, ApiSource, ApiState, WatchBounds};
use arbiter::Arbiter;
use handoff::{Handed, Notifier, Target};
use metrics::{Metrics, Outcome};
use report::{Applied, Reporter};
use secrets::Feeds;
use source::{Origin, Owner, Snapshot};
use volume::VolumeSource;

/// Arguments of `hotconf agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The directory where the ConfigMap is mounted (watched with inotify; the kubelet's
    /// atomic `..data` swap is handled).
    #[arg(long, env = "HOTCONF_WATCH_DIR")]
    pub watch_dir: Option<PathBuf>,
    /// Watch the ConfigMap through the API server: NAMESPACE/NAME, or NAME in the Pod's
    /// namespace. With --watch-dir too, the API is primary and the volume the fallback.
    #[arg(long, env = "HOTCONF_CONFIGMAP")]
    pub configmap: Option<String>,
    /// The data key holding the document (default: the only key, else config.yaml). Its
    /// extension gives the format: .yaml/.yml, .json, .properties or .env.
    #[arg(long, env = "HOTCONF_FILE")]
    pub file: Option<String>,
    /// Where to write each good document (atomically: temporary file, fsync, rename).
    #[arg(long, env = "HOTCONF_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Follow the projected Secret (the ConfigMap's name) through the API server too:
    /// NAMESPACE/NAME, or NAME in the Pod's namespace. Its values are handed to the
    /// application with the document they belong to (see --secrets-output).
    #[arg(long, env = "HOTCONF_SECRET")]
    pub secret: Option<String>,
    /// The directory where the projected Secret is mounted (the fallback to --secret, or the
    /// only Secret source).
    #[arg(long, env = "HOTCONF_SECRET_DIR")]
    pub secret_dir: Option<PathBuf>,
    /// Write the sensitive values to this file ({"values": {key: value}} in the document's
    /// format, mode 0600) instead of merging them into --output (whose mode is then 0600).
    #[arg(long, env = "HOTCONF_SECRETS_OUTPUT")]
    pub secrets_output: Option<PathBuf>,
    /// POST here after each new document (http://; retried with backoff, 2xx is success).
    #[arg(long, env = "HOTCONF_RELOAD_URL")]
    pub reload_url: Option<String>,
    /// How many times a failed reload POST is retried.
    #[arg(long, env = "HOTCONF_RELOAD_RETRIES", default_value_t = 5)]
    pub reload_retries: u32,
    /// How long one reload POST may take.
    #[arg(long, env = "HOTCONF_RELOAD_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub reload_timeout: Duration,
    /// Send this signal after each new document (HUP, SIGHUP, 1, ...); needs --pid-file or
    /// --process-name.
    #[arg(long, env = "HOTCONF_SIGNAL")]
    pub signal: Option<String>,
    /// The file holding the pid to signal.
    #[arg(long, env = "HOTCONF_PID_FILE", requires = "signal")]
    pub pid_file: Option<PathBuf>,
    /// Signal every process with this name (needs shareProcessNamespace in the Pod).
    #[arg(
        long,
        env = "HOTCONF_PROCESS_NAME",
        requires = "signal",
        conflicts_with = "pid_file"
    )]
    pub process_name: Option<String>,
    /// Run this with `sh -c` after each new document (HOTCONF_REVISION, HOTCONF_HASH and
    /// HOTCONF_OUTPUT are set).
    #[arg(long, env = "HOTCONF_EXEC")]
    pub exec: Option<String>,
    /// Expand ${VAR} and ${VAR:default} in the document's string values before writing.
    #[arg(long, env = "HOTCONF_EXPAND_ENV")]
    pub expand_env: bool,
    /// Serve the OpenFeature Remote Evaluation Protocol (OFREP) here, e.g. 127.0.0.1:8016:
    /// the flags of the document handed on last, for any OpenFeature SDK (off by default).
    #[arg(long, env = "HOTCONF_OFREP_ADDR")]
    pub ofrep_addr: Option<String>,
    /// Address of the admin server (/metrics, /healthz, /readyz); "off" disables it.
    #[arg(long, env = "HOTCONF_ADMIN_ADDR", default_value = "0.0.0.0:9901")]
    pub admin_addr: String,
    /// How long the volume directory must be quiet before a change is read.
    #[arg(long, env = "HOTCONF_DEBOUNCE", default_value = "10ms", value_parser = duration)]
    pub debounce: Duration,
    /// The timeoutSeconds of each API watch: the server ends the watch after this long (with a
    /// bookmark just before) and the agent watches again from where it was, so a healthy
    /// watch is heard from at least this often even when nothing changes. Whole seconds.
    #[arg(long, env = "HOTCONF_WATCH_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub watch_timeout: Duration,
    /// How long the API source may hear nothing (no list answer, event, bookmark or end of
    /// the watch) before the watch is taken for stalled: dropped, reported down, and the
    /// ConfigMap listed again. Must exceed --watch-timeout [default: --watch-timeout + 15s].
    #[arg(long, env = "HOTCONF_WATCH_IDLE_TIMEOUT", value_parser = duration)]
    pub watch_idle_timeout: Option<Duration>,
    /// This Pod's name, for the hotconf.dev/applied annotation (Downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This Pod's namespace (Downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
}

fn duration(text: &str) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::parse(text)
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    run_until(args, crate::shutdown::signal()).await
}

/// Runs the agent until `shutdown` resolves.
pub async fn run_until(
    args: AgentArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    if args.watch_dir.is_none() && args.configmap.is_none() {
        bail!("give a source: --watch-dir DIR and/or --configmap NAMESPACE/NAME");
    }
    let follows_secret = args.secret.is_some() || args.secret_dir.is_some();
    if args.secrets_output.is_some() && !follows_secret {
        bail!(
            "--secrets-output needs a Secret source: --secret NAMESPACE/NAME and/or --secret-dir DIR"
        );
    }
    if follows_secret && args.output.is_none() && args.secrets_output.is_none() {
        bail!("the Secret's values need a file: give --output (merged) or --secrets-output");
    }
    let bounds = WatchBounds::new(args.watch_timeout, args.watch_idle_timeout)?;
    let started = Instant::now();
    let volume_health = args
        .watch_dir
        .as_ref()
        .map(|_| health::shared(volume::STALE, started));
    let api_health = args
        .configmap
        .as_ref()
        .map(|_| health::shared(bounds.idle, started));
    let signal = match &args.signal {
        None => None,
        Some(s) => {
            let sig = handoff::parse_signal(s).map_err(anyhow::Error::msg)?;
            let target = match (&args.pid_file, &args.process_name) {
                (Some(f), _) => Target::PidFile(f.clone()),
                (None, Some(n)) => Target::Name(n.clone()),
                (None, None) => bail!("--signal needs --pid-file or --process-name"),
            };
            Some((sig, target))
        }
    };
    let notifier = Notifier::new(
        args.reload_url.as_deref(),
        args.reload_retries,
        args.reload_timeout,
        signal,
        args.exec.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    for file in [&args.output, &args.secrets_output].into_iter().flatten() {
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let sources = [(Origin::Api, &api_health), (Origin::Volume, &volume_health)]
        .into_iter()
        .filter_map(|(origin, h)| Some((origin, h.clone()?)))
        .collect();
    let metrics = Arc::new(Metrics::with_sources(sources));
    if !matches!(args.admin_addr.as_str(), "" | "off") {
        let mut stop = stop_rx.clone();
        let bound = metrics::serve(&args.admin_addr, metrics.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .with_context(|| format!("serving the admin endpoints on {}", args.admin_addr))?;
        tracing::info!(addr = %bound, "admin server listening");
    }

    let flags = Arc::new(ofrep::Flags::default());
    if let Some(addr) = args
        .ofrep_addr
        .as_deref()
        .filter(|a| !matches!(*a, "" | "off"))
    {
        let mut stop = stop_rx.clone();
        let bound = ofrep::serve(addr, flags.clone(), metrics.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .with_context(|| format!("serving OFREP on {addr}"))?;
        tracing::info!(addr = %bound, "OFREP server listening");
    }

    // A client is needed for the API source and for the Pod annotation.
    let pod = args.pod_name.clone().zip(args.pod_namespace.clone());
    let needs_api = args.configmap.is_some() || args.secret.is_some();
    let client = if needs_api || pod.is_some() {
        match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) if needs_api => {
                return Err(e).context("connecting to the API server for --configmap/--secret");
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes client: the Pod will not be annotated");
                None
            }
        }
    } else {
        None
    };
    let reporter = match (&client, &pod) {
        (Some(c), Some((name, ns))) => Some(Reporter::spawn(c.clone(), ns, name)),
        _ => {
            tracing::info!(
                "POD_NAME/POD_NAMESPACE not set: the hotconf.dev/applied annotation is not written"
            );
            None
        }
    };

    let mut volume_rx = None;
    if let (Some(dir), Some(health)) = (&args.watch_dir, &volume_health) {
        let (tx, rx) = watch::channel(None);
        let source = VolumeSource {
            dir: dir.clone(),
            key: args.file.clone(),
            every_key: false,
            debounce: args.debounce,
            health: health.clone(),
        };
        tokio::spawn(source.run(tx));
        volume_rx = Some(rx);
    }
    let mut api_rx = None;
    if let (Some(spec), Some(client), Some(health)) = (&args.configmap, &client, &api_health) {
        let (namespace, name) = qualified("--configmap", spec, args.pod_namespace.as_deref())?;
        let (tx, rx) = watch::channel(ApiState::default());
        let source = ApiSource {
            client: client.clone(),
            namespace,
            name,
            key: args.file.clone(),
            bounds,
            health: health.clone(),
        };
        tokio::spawn(source.run(tx));
        api_rx = Some(rx);
    }
    let mut secret_feeds = Feeds::default();
    if let (Some(spec), Some(client)) = (&args.secret, &client) {
        let (namespace, name) = qualified("--secret", spec, args.pod_namespace.as_deref())?;
        secret_feeds.follow_api(client.clone(), namespace, name, bounds);
    }
    if let Some(dir) = &args.secret_dir {
        secret_feeds.follow_dir(dir.clone(), args.debounce);
    }

    let mut agent = Agent {
        arbiter: Arbiter::new(Instant::now()),
        notifier,
        output: args.output.clone(),
        secrets_output: args.secrets_output.clone(),
        awaiting: None,
        flags,
        expand_env: args.expand_env,
        metrics,
        reporter,
        last_good: None,
        settled: None,
        unannounced: None,
        unwritten: None,
        first: true,
    };
    tracing::info!(
        watch_dir = args.watch_dir.as_ref().map(|d| d.display().to_string()),
        configmap = args.configmap.as_deref(),
        output = args.output.as_ref().map(|o| o.display().to_string()),
        watch_timeout = ?bounds.timeout,
        watch_idle_timeout = ?bounds.idle,
        "agent started"
    );
    agent.restore();
    agent.run(volume_rx, api_rx, secret_feeds, shutdown).await;
    let _ = stop_tx.send(true);
    Ok(ExitCode::SUCCESS)
}

// NAMESPACE/NAME, or NAME in the Pod's namespace.
fn qualified(
    flag: &str,
    spec: &str,
    pod_namespace: Option<&str>,
) -> anyhow::Result<(String, String)> {
    match (spec.split_once('/'), pod_namespace) {
        (Some((ns, name)), _) => Ok((ns.to_string(), name.to_string())),
        (None, Some(ns)) => Ok((ns.to_string(), spec.to_string())),
        (None, None) => bail!("{flag} {spec}: give NAMESPACE/NAME or set POD_NAMESPACE"),
    }
}

// What was handed on last, for reports after a refusal.
#[derive(Clone, Debug)]
struct Good {
    owner: Owner,
    revision: Option<i64>,
    hash: String,
}

/// A checked document, ready to hand off.
struct Ready {
    hash: String,
    bytes: String,
    // Whether the document names sensitive values (a `secrets` section).
    names_secrets: bool,
    // The `--secrets-output` file's bytes, when there is one to write.
    secrets: Option<String>,
    // Whether the output holds sensitive values (written with mode 0600).
    private: bool,
    // The flags the OFREP server answers from: the document's (YAML and JSON) or the metadata
    // key's, expanded as the output is.
    flags: serde_json::Map<String, serde_json::Value>,
}

/// The check stage: the text parses, its hash matches the annotation; the bytes to write
/// (with `${VAR}` expanded from the environment when `expand_env`).
fn prepare(snapshot: &Snapshot, expand_env: bool) -> Result<Ready, String> {
    let format = snapshot.format();
    let text = snapshot.text.as_ref().map_err(|u| u.0.clone())?;
    let checked = check::check(text, format, snapshot.hash.as_deref()).map_err(|r| r.0)?;
    let lookup = |name: &str| std::env::var(name).ok();
    let (bytes, missing) = check::output(
        text,
        &checked,
        format,
        expand_env.then_some(&lookup as check::Lookup<'_>),
    );
    if !missing.is_empty() {
        tracing::warn!(variables = ?missing, "unset environment variables without a default expand to nothing");
    }
    let flags = match &checked.document {
        Some(document) => document
            .get("featureFlags")
            .and_then(serde_json::Value::as_object)
            .cloned(),
        None => snapshot.flags.clone(),
    }
    .unwrap_or_default();
    // The application reads flags with the variables expanded: OFREP answers alike.
    let flags = match expand_env {
        true => match check::expand_value(&flags.into(), &lookup, &mut Vec::new()) {
            serde_json::Value::Object(flags) => flags,
            _ => serde_json::Map::new(),
        },
        false => flags,
    };
    Ok(Ready {
        hash: checked.hash,
        bytes,
        names_secrets: secrets::named(text, checked.document.as_ref(), format),
        secrets: None,
        private: false,
        flags,
    })
}

/// The Secret stage: a document that names sensitive values gets the values of the Secret
/// version stamped with its hash, merged into the output or as the separate file. `Err`: that
/// version has not arrived (why the document waits).
fn add_secrets(
    snapshot: &Snapshot,
    mut ready: Ready,
    feeds: &Feeds,
    separate: bool,
) -> Result<Ready, String> {
    if !ready.names_secrets {
        return Ok(ready);
    }
    let Some(values) = feeds.values_for(snapshot.hash.as_deref())? else {
        return Ok(ready);
    };
    let format = snapshot.format();
    if separate {
        ready.secrets = Some(secrets::file(&values, format));
    } else {
        ready.bytes = secrets::merge(&ready.bytes, format, &values)?;
        ready.private = true;
    }
    Ok(ready)
}

/// What became of one snapshot.
enum Fate {
    /// It did not pass the checks (why).
    Refused(String),
    /// It waits for the Secret version it belongs to (why).
    Awaiting(String),
    /// The output file could not be written (why); the previous one stays.
    WriteFailed(String),
    /// Handed off: written (unless `unchanged` at start-up), and the application notified or
    /// not (why).
    Applied {
        hash: String,
        unchanged: bool,
        notified: Result<(), handoff::NotifyError>,
        handed: Handed,
        flags: serde_json::Map<String, serde_json::Value>,
        // The SHA-256 of the output's bytes (what the file holds now).
        output_sha256: String,
    },
}

/// The first wait before a document the application could not be told about (its reload
/// endpoint was down past the retries) is announced again; it doubles up to [`RENOTIFY_MAX`].
pub const RENOTIFY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two announcements of the same document.
pub const RENOTIFY_MAX: Duration = Duration::from_secs(60);

// When to try again: first after RENOTIFY_FIRST, then twice as long each time, up to
// RENOTIFY_MAX.
struct Later {
    at: Instant,
    wait: Duration,
}

impl Later {
    fn first() -> Later {
        Later {
            at: Instant::now() + RENOTIFY_FIRST,
            wait: RENOTIFY_FIRST,
        }
    }

    // The attempt at `at` failed.
    fn failed_again(&mut self) {
        self.wait = (self.wait * 2).min(RENOTIFY_MAX);
        self.at = Instant::now() + self.wait;
    }
}

// Resolves at `at`; never without one.
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

// A document written for the application but not announced to it yet.
struct Unannounced {
    handed: Handed,
    identity: String,
    later: Later,
}

struct Agent {
    arbiter: Arbiter,
    notifier: Notifier,
    output: Option<PathBuf>,
    secrets_output: Option<PathBuf>,
    // What the OFREP server answers from: the flags of the document handed on last.
    flags: Arc<ofrep::Flags>,
    // A document waiting for the Secret version it belongs to: handled again when a Secret
    // source changes, until it is handed on or a newer document replaces it.
    awaiting: Option<Snapshot>,
    expand_env: bool,
    metrics: Arc<Metrics>,
    reporter: Option<Reporter>,
    last_good: Option<Good>,
    // The identity of the content the application has: written and notified (or found there).
    settled: Option<String>,
    // The last document handed on, when notifying the application failed: announced again
    // later, until it takes it or a newer document replaces it.
    unannounced: Option<Unannounced>,
    // The newest document, when writing it failed (a full or read-only disk): tried again
    // later, until it is written or a newer document replaces it.
    unwritten: Option<Unwritten>,
    first: bool,
}

// A document whose hand-off failed at the write.
struct Unwritten {
    snapshot: Snapshot,
    later: Later,
}

// Resolves when the receiver (if any) sees a change; pends forever without one, and drops a
// receiver whose source ended.
pub(crate) async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
            }
        }
        None => std::future::pending().await,
    }
}

impl Agent {
    /// Takes up what the output file holds from before this start (see [`state`]): served as
    /// the last good document until a source gives a newer one, and announced again when the
    /// application was never told about it.
    fn restore(&mut self) {
        let Some(output) = self.output.clone() else {
            return;
        };
        let Some(st) = state::read(&output) else {
            return;
        };
        tracing::info!(
            revision = st.revision,
            file = %output.display(),
            announced = st.announced,
            "the output holds the last good document from before this start: it is served until a source gives a newer one"
        );
        self.last_good = Some(Good {
            owner: Owner {
                kind: st.kind,
                name: st.name,
            },
            revision: st.revision,
            hash: st.hash.clone(),
        });
        self.metrics.set_revision(st.revision);
        self.metrics.set_ready();
        self.flags.set(st.flags.clone(), st.revision, &st.hash);
        if st.announced {
            self.settled = Some(st.identity);
        } else {
            // Written, never announced (the application was down, then the agent stopped):
            // the same content from a source is handed on again, and without one it is
            // announced on the usual schedule.
            self.first = false;
            self.unannounced = Some(Unannounced {
                handed: Handed {
                    revision: st.revision,
                    hash: st.hash,
                    file: Some(output),
                },
                identity: st.identity,
                later: Later::first(),
            });
        }
    }

    // Records what the output file holds now (`output_sha256`: the SHA-256 of its bytes), for
    // the next start.
    fn persist(
        &self,
        snapshot: &Snapshot,
        hash: &str,
        announced: bool,
        output_sha256: String,
        flags: serde_json::Map<String, serde_json::Value>,
    ) {
        let Some(output) = &self.output else {
            return;
        };
        let st = state::State {
            revision: snapshot.revision,
            hash: hash.to_string(),
            identity: snapshot.identity.clone(),
            kind: snapshot.owner.kind.clone(),
            name: snapshot.owner.name.clone(),
            output_sha256,
            announced,
            flags,
        };
        if let Err(e) = state::write(output, &st) {
            tracing::warn!(error = %e, "writing the agent's state beside the output failed");
        }
    }

    async fn run(
        &mut self,
        mut volume_rx: Option<watch::Receiver<Option<Snapshot>>>,
        mut api_rx: Option<watch::Receiver<ApiState>>,
        mut secret_feeds: Feeds,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let no_api = ApiState::default();
        loop {
            // Hand on everything there is to hand on, newest state first.
            loop {
                let volume = volume_rx
                    .as_mut()
                    .and_then(|r| r.borrow_and_update().clone());
                let api = api_rx
                    .as_mut()
                    .map(|r| r.borrow_and_update().clone())
                    .unwrap_or_else(|| no_api.clone());
                match self.arbiter.pick(volume.as_ref(), &api, Instant::now()) {
                    Some(snapshot) => self.handle(snapshot, &secret_feeds).await,
                    None => break,
                }
            }
            let deadline = api_rx
                .as_ref()
                .and_then(|r| self.arbiter.deadline(&r.borrow(), Instant::now()));
            let announce_at = self.unannounced.as_ref().map(|u| u.later.at);
            let rewrite_at = self.unwritten.as_ref().map(|u| u.later.at);
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("stopping");
                    return;
                }
                _ = changed(&mut volume_rx) => {}
                _ = changed(&mut api_rx) => {
                    if let Some(rx) = &api_rx
                        && let ApiHealth::Failing(e) = &rx.borrow().health
                    {
                        tracing::debug!(error = %e, "API source failing; the volume is the fallback");
                    }
                }
                _ = sleep_until_some(deadline) => {}
                _ = sleep_until_some(announce_at) => self.announce_again().await,
                _ = sleep_until_some(rewrite_at) => self.write_again(&secret_feeds).await,
                _ = secret_feeds.changed() => {
                    if let Some(snapshot) = self.awaiting.take() {
                        self.handle(snapshot, &secret_feeds).await;
                    }
                }
            }
        }
    }

    /// Hands off again the document whose write failed.
    async fn write_again(&mut self, feeds: &Feeds) {
        let Some(Unwritten {
            snapshot,
            mut later,
        }) = self.unwritten.take()
        else {
            return;
        };
        self.handle(snapshot, feeds).await;
        // Failed again: the next attempt waits longer.
        if let Some(again) = self.unwritten.as_mut() {
            later.failed_again();
            again.later = later;
        }
    }

    /// Tells the application again about the document it could not be told about.
    async fn announce_again(&mut self) {
        let Some(mut u) = self.unannounced.take() else {
            return;
        };
        match self.notifier.notify(&u.handed).await {
            Ok(()) => {
                tracing::info!(
                    revision = u.handed.revision,
                    hash = %u.handed.hash,
                    "the application took the document on a later attempt"
                );
                self.metrics.count(Outcome::Success);
                if let Some(output) = &self.output
                    && let Some(mut st) = state::read(output)
                    && st.identity == u.identity
                {
                    st.announced = true;
                    if let Err(e) = state::write(output, &st) {
                        tracing::warn!(error = %e, "writing the agent's state beside the output failed");
                    }
                }
                self.settled = Some(u.identity);
                self.report(None, None);
            }
            Err(e) => {
                u.later.failed_again();
                tracing::warn!(
                    revision = u.handed.revision,
                    error = %e,
                    next_in = ?u.later.wait,
                    "notifying the application failed again; it will be told again"
                );
                self.unannounced = Some(u);
            }
        }
    }

    /// One snapshot through the pipeline, each stage once: check it, hand it off (write, then
    /// notify), then record and report what became of it.
    async fn handle(&mut self, snapshot: Snapshot, feeds: &Feeds) {
        // Whatever comes of this one, it replaces a document that could not be written or
        // waited for its Secret.
        self.unwritten = None;
        self.awaiting = None;
        let separate = self.secrets_output.is_some();
        let fate = match prepare(&snapshot, self.expand_env) {
            Ok(ready) => match add_secrets(&snapshot, ready, feeds, separate) {
                Ok(ready) => self.hand_off(&snapshot, ready).await,
                Err(reason) => Fate::Awaiting(reason),
            },
            Err(reason) => Fate::Refused(reason),
        };
        self.record(&snapshot, fate);
    }

    /// The hand-off stage: writes the output file atomically, then notifies the application.
    /// An output file that already holds this document is left alone and the application is
    /// not notified again: at start-up (after an agent restart), and when the application has
    /// this very content already (it came again under another revision).
    async fn hand_off(&mut self, snapshot: &Snapshot, mut ready: Ready) -> Fate {
        let first = std::mem::replace(&mut self.first, false);
        let settled = self.settled.as_deref() == Some(snapshot.identity.as_str());
        let output_sha256 = source::sha256_hex(ready.bytes.as_bytes());
        // The values first, so that the application never reads a document without them.
        let files: Vec<(PathBuf, String, bool)> = [
            (self.secrets_output.clone(), ready.secrets.take(), true),
            (
                self.output.clone(),
                Some(ready.bytes.clone()),
                ready.private,
            ),
        ]
        .into_iter()
        .filter_map(|(path, bytes, private)| Some((path?, bytes?, private)))
        .collect();
        let unchanged = if files.is_empty() {
            settled
        } else {
            (first || settled)
                && files.iter().all(|(path, bytes, _)| {
                    std::fs::read(path).is_ok_and(|b| b == bytes.as_bytes())
                })
        };
        if !unchanged {
            for (path, bytes, private) in files {
                let mode = if private { 0o600 } else { 0o644 };
                let shown = path.display().to_string();
                let written = tokio::task::spawn_blocking(move || {
                    handoff::write_atomic_mode(&path, bytes.as_bytes(), mode)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                if let Err(e) = written {
                    return Fate::WriteFailed(format!("writing {shown}: {e}"));
                }
            }
        }
        let handed = Handed {
            revision: snapshot.revision,
            hash: ready.hash.clone(),
            file: self.output.clone(),
        };
        let notified = if unchanged || self.notifier.is_empty() {
            Ok(())
        } else {
            self.notifier.notify(&handed).await
        };
        Fate::Applied {
            hash: ready.hash,
            unchanged,
            notified,
            handed,
            flags: ready.flags,
            output_sha256,
        }
    }

    /// The report stage: tells the arbiter, counts, logs, keeps the last good document, and
    /// writes the Pod annotation.
    fn record(&mut self, snapshot: &Snapshot, fate: Fate) {
        let source = snapshot.origin.as_str();
        match fate {
            Fate::Refused(reason) => {
                let what = match snapshot.revision {
                    Some(r) => format!("revision {r}"),
                    None => format!("the new {source} content"),
                };
                tracing::warn!(
                    source,
                    revision = snapshot.revision,
                    key = %snapshot.key,
                    reason = %reason,
                    "refused a new document; the last good one stays"
                );
                self.metrics.count(Outcome::Refused);
                self.metrics
                    .set_not_handed_on(format!("{what} ({source}) refused: {reason}"));
                self.arbiter.handled(snapshot, false);
                self.report_for(
                    Some(format!("{what} refused: {reason}")),
                    snapshot.revision,
                    &snapshot.owner,
                );
            }
            Fate::Awaiting(reason) => {
                tracing::info!(
                    source,
                    revision = snapshot.revision,
                    reason = %reason,
                    "a new document waits for its Secret"
                );
                self.metrics.set_not_handed_on(reason.clone());
                // Not handled yet: the arbiter does not offer it again, the Secret feeds do.
                self.arbiter.handled(snapshot, false);
                self.report_for(Some(reason), snapshot.revision, &snapshot.owner);
                self.awaiting = Some(snapshot.clone());
            }
            Fate::WriteFailed(reason) => {
                tracing::error!(error = %reason, "hand-off failed; the previous file stays, and the write is tried again");
                self.metrics.count(Outcome::WriteFailed);
                self.metrics.set_not_handed_on(reason.clone());
                self.arbiter.handled(snapshot, false);
                self.report(Some(reason), snapshot.revision);
                self.unwritten = Some(Unwritten {
                    snapshot: snapshot.clone(),
                    later: Later::first(),
                });
            }
            Fate::Applied {
                hash,
                unchanged,
                notified,
                handed,
                flags,
                output_sha256,
            } => {
                self.flags.set(flags.clone(), snapshot.revision, &hash);
                let latency = snapshot.seen_at.elapsed();
                self.arbiter.handled(snapshot, true);
                self.last_good = Some(Good {
                    owner: snapshot.owner.clone(),
                    revision: snapshot.revision,
                    hash: hash.clone(),
                });
                self.metrics.set_revision(snapshot.revision);
                self.metrics.set_ready();
                self.persist(snapshot, &hash, notified.is_ok(), output_sha256, flags);
                self.settled = notified.is_ok().then(|| snapshot.identity.clone());
                // A newer document replaces one the application was never told about.
                self.unannounced = None;
                match notified {
                    Ok(()) => {
                        if !unchanged {
                            self.metrics.count(Outcome::Success);
                            self.metrics.observe_latency(latency);
                        }
                        tracing::info!(
                            source,
                            revision = snapshot.revision,
                            hash = %hash,
                            latency_ms = latency.as_secs_f64() * 1000.0,
                            unchanged,
                            "applied"
                        );
                        self.report(None, None);
                    }
                    Err(e) => {
                        tracing::error!(
                            source,
                            revision = snapshot.revision,
                            error = %e,
                            "written, but notifying the application failed"
                        );
                        self.metrics.count(Outcome::NotifyFailed);
                        self.report(Some(format!("reload failed: {e}")), snapshot.revision);
                        self.unannounced = Some(Unannounced {
                            handed,
                            identity: snapshot.identity.clone(),
                            later: Later::first(),
                        });
                    }
                }
            }
        }
    }

    // `failed`: the revision the error is about, so the operator counts it against the right one.
    fn report(&self, error: Option<String>, failed: Option<i64>) {
        self.report_for(error, failed, &Owner::default());
    }

    // Reports the last good document with `error`; `owner` names the CR when nothing good
    // was handed on yet.
    fn report_for(&self, error: Option<String>, failed: Option<i64>, owner: &Owner) {
        let Some(reporter) = &self.reporter else {
            return;
        };
        let good = self.last_good.clone();
        let owner = good.as_ref().map(|g| &g.owner).unwrap_or(owner);
        reporter.report(Applied {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            revision: good.as_ref().and_then(|g| g.revision),
            hash: good
                .as_ref()
                .map(|g| g.hash.clone())
                .filter(|h| !h.is_empty()),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            failed_revision: error.as_ref().and(failed),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Format;

    fn snapshot(text: Result<&str, &str>, hash: Option<&str>) -> Snapshot {
        let mut s = Snapshot::new(
            Origin::Api,
            "config.yaml",
            text.map(str::to_owned)
                .map_err(|e| source::Unreadable(e.to_owned())),
        );
        s.hash = hash.map(str::to_owned);
        s
    }

    #[test]
    fn the_check_stage_passes_good_documents_and_says_why_it_refuses_others() {
        let good = "a: 1\n";
        let hash = crate::document::hash(&serde_json::json!({"a": 1}));
        let ready = prepare(&snapshot(Ok(good), Some(&hash)), false).unwrap();
        assert_eq!(
            (ready.hash.as_str(), ready.bytes.as_str()),
            (hash.as_str(), good)
        );

        let refused = prepare(&snapshot(Ok(good), Some("sha256:other")), false);
        assert!(refused.err().unwrap().starts_with("hash mismatch"));
        let unreadable = prepare(&snapshot(Err("no data key config.yaml"), None), false);
        assert_eq!(unreadable.err().as_deref(), Some("no data key config.yaml"));
        let broken = prepare(&snapshot(Ok("a: [1\n"), None), false);
        assert!(broken.err().unwrap().contains("does not parse"));
    }

    /// Found by an acceptance run: OFREP served nothing for a properties, env or flagd
    /// document. The flags come from the metadata key then, expanded as the output is.
    #[test]
    fn flags_come_from_the_document_or_the_metadata_key_expanded_as_the_output() {
        let doc = serde_json::json!({"featureFlags": {"f": {"enabled": true,
            "variants": {"one": "${HOTCONF_TEST_FLAG_HOME:/home}"}, "defaultVariant": "one"}}});
        let yaml = snapshot(Ok(&crate::document::render(&doc, Format::Yaml)), None);
        assert_eq!(
            prepare(&yaml, false).unwrap().flags["f"]["variants"]["one"],
            "${HOTCONF_TEST_FLAG_HOME:/home}"
        );
        assert_eq!(
            prepare(&yaml, true).unwrap().flags["f"]["variants"]["one"],
            "/home",
            "expanded as the output file is"
        );
        let mut props = Snapshot::new(
            Origin::Volume,
            "config.properties",
            Ok(crate::document::render(&doc, Format::Properties)),
        );
        assert!(prepare(&props, false).unwrap().flags.is_empty());
        props.flags = doc["featureFlags"].as_object().cloned();
        assert_eq!(
            prepare(&props, true).unwrap().flags["f"]["variants"]["one"],
            "/home"
        );
    }

    #[test]
    fn a_volume_snapshot_is_checked_against_its_metadata_key() {
        let doc = serde_json::json!({"values": {"a": 1}});
        let text = crate::document::render(&doc, crate::crd::Format::Yaml);
        let meta = |hash: &str| crate::projection::Meta {
            kind: "RuntimeConfig".into(),
            name: "lazy".into(),
            revision: 5,
            hash: hash.into(),
            file_name: "config.yaml".into(),
            restart_keys: Vec::new(),
            feature_flags: None,
        };
        let good = volume::snapshot_of(
            "config.yaml".into(),
            Ok(text.clone()),
            Some(meta(&crate::document::hash(&doc))),
        );
        let ready = prepare(&good, false).unwrap();
        assert_eq!(ready.hash, crate::document::hash(&doc));
        assert_eq!(good.revision, Some(5));

        // A document that does not match its metadata (half-synced, edited on the node) is
        // refused as an API snapshot with the wrong annotation would be.
        let tampered = volume::snapshot_of(
            "config.yaml".into(),
            Ok(text.replace("a: 1", "a: 2")),
            Some(meta(&crate::document::hash(&doc))),
        );
        let refused = prepare(&tampered, false).err().unwrap();
        assert!(refused.starts_with("hash mismatch"), "{refused}");
    }
}
