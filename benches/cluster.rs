//! The cluster benchmark (`make bench`): the release-built operator against a local control plane
//! (etcd + kube-apiserver, started by this program under supervisors), every figure side by side
//! with a floor measured in the same run on the same API server.
//!
//! 1. Projection latency: CR patch returned → the ConfigMap watch event with the new revision,
//!    against a direct ConfigMap apply → its watch event, interleaved at a steady rate.
//! 2. Throughput: CRs created at once → all projected, against raw server-side-apply writes/s.
//! 3. Cold start: an operator start over 1,000 and 10,000 converged CRs (seeded with the library's
//!    own `reconcile::plan`, 10 snapshots each): time to `/readyz`, time until every object was
//!    reconciled, writes and reads in the audit log, the operator's CPU, and a plain client's
//!    list of the same CRs, asked as the operator asks. Then 100,000 on a control plane of
//!    their own (see [`huge`]): one seeded as the others, then copied straight into etcd.
//! 4. Memory: the operator's RSS at those sizes against the raw JSON of what it caches.
//! 5. Discipline: writes and reconciles per change over the latency run.
//! 6. Core speed: read back from criterion's estimates (`cargo bench --bench core`).
//!
//! It prints one table and writes `target/bench/report.json`. Under `cargo test` (no `--bench`
//! argument) it runs every phase at a tiny scale and writes nothing, and it is skipped when the
//! control-plane binaries are missing. `HOTCONF_BENCH_SCALE` (a factor, default 1) scales the
//! object counts for a quicker look; `HOTCONF_BENCH_HOLD=<file>` keeps the control plane and the
//! seeded objects up after the cold starts, until that file is removed.

mod fixtures;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use hotconf::crd::{MANAGER, RuntimeConfig, names};
use hotconf::dev::control_plane::{self, ControlPlane, OPERATOR_USER, Options, Process};
use hotconf::document;
use hotconf::kinds::ConfigResource;
use hotconf::reconcile::{self, Observed};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Declared keys of the benchmark's RuntimeConfigs.
const KEYS: usize = 20;
/// Snapshots of history of every seeded object.
const HISTORY: u64 = 10;
/// The annotation the floor's ConfigMap carries its sequence number in.
const SEQ: &str = "bench.hotconf.dev/seq";
/// How many shards the sharded run has, and their ring (`--controller-ring`).
const SHARDS: usize = 3;
const RING: &str = "hotconf";
/// The label kubernetes-controller-sharding's sharder assigns an object to a shard of `RING` by.
const SHARD_LABEL: &str = "shard.alpha.sharding.timebertt.dev/hotconf";
/// Field manager of the benchmark's own writes (the "user" side).
const BENCH_MANAGER: &str = "hotconf-bench";

/// How many of everything.
#[derive(Clone, Copy, Debug)]
struct Scale {
    latency_changes: usize,
    rate_per_s: f64,
    throughput: usize,
    floor_writes: usize,
    in_flight: usize,
    small: usize,
    large: usize,
    huge: usize,
}

impl Scale {
    fn new(bench: bool) -> Scale {
        if !bench {
            return Scale {
                latency_changes: 20,
                rate_per_s: 20.0,
                throughput: 40,
                floor_writes: 40,
                in_flight: 8,
                small: 30,
                large: 60,
                huge: 120,
            };
        }
        let factor: f64 = std::env::var("HOTCONF_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let n = |x: usize| ((x as f64 * factor).round() as usize).max(10);
        Scale {
            latency_changes: n(500),
            rate_per_s: 10.0,
            throughput: n(1_000),
            floor_writes: n(1_000),
            in_flight: 32,
            small: n(1_000),
            large: n(10_000),
            huge: n(100_000),
        }
    }
}

fn main() -> ExitCode {
    let bench = std::env::args().any(|a| a == "--bench");
    let assets = control_plane::asset_dir();
    if !bench && !assets.join("kube-apiserver").is_file() {
        eprintln!(
            "cluster bench: skipped, no control-plane binaries in {}",
            assets.display()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(bench)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("bench")
}

fn say(text: impl AsRef<str>) {
    eprintln!("[bench] {}", text.as_ref());
}

async fn run(bench: bool) -> anyhow::Result<()> {
    let scale = Scale::new(bench);
    let out = out_dir();
    let logs = out.join(if bench { "logs" } else { "smoke-logs" });
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    // The operator as built for this run: the release binary under `cargo bench`.
    let bin = std::env::var_os("HOTCONF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hotconf")));
    say(format!(
        "scale {scale:?}; operator {}; work dir under {}",
        bin.display(),
        std::env::temp_dir().display()
    ));

    let started = Instant::now();
    let plane = ControlPlane::start(Options {
        // The garbage collector is not needed here and would compete for the two cores.
        controller_manager: false,
        users: Vec::new(),
        crds: vec![repo().join("crds")],
        ..Options::default()
    })
    .await
    .context("starting the control plane")?;
    say(format!(
        "control plane up in {:.1}s at {} (data in {})",
        started.elapsed().as_secs_f64(),
        plane.server(),
        plane.dir().display()
    ));
    let result = phases(&plane, &bin, &logs, scale, bench).await;
    if result.is_err() {
        plane.print_logs();
    }
    let mut report = result?;
    // Its memory back before the largest run, which has a control plane of its own.
    drop(plane);
    if wants("huge") {
        say(format!(
            "{} converged CRs on a control plane of their own",
            scale.huge
        ));
        let figure = huge(&bin, &logs, scale.huge).await?;
        match report["cold_start"].as_array_mut() {
            Some(cold) => cold.push(figure),
            None => report["cold_start"] = json!([figure]),
        }
    }
    print_table(&report);
    if bench {
        // A partial run (`HOTCONF_BENCH_ONLY`) leaves the last full report alone.
        let partial = std::env::var_os("HOTCONF_BENCH_ONLY").is_some_and(|o| !o.is_empty());
        let path = out.join(if partial {
            "report-partial.json"
        } else {
            "report.json"
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        say(format!("report written to {}", path.display()));
    }
    say(format!("done in {:.0}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Whether this run has `phase`: `HOTCONF_BENCH_ONLY=cold` (or a comma list of floor,
/// throughput, latency, cold, huge) runs a part.
fn wants(phase: &str) -> bool {
    let only = std::env::var("HOTCONF_BENCH_ONLY").unwrap_or_default();
    only.is_empty() || only.split(',').any(|p| p.trim() == phase)
}

async fn phases(
    plane: &ControlPlane,
    bin: &Path,
    logs: &Path,
    scale: Scale,
    bench: bool,
) -> anyhow::Result<Value> {
    let client = plane.client().await?;
    let environment = environment(&client, plane).await;

    let mut floor = Value::Null;
    if wants("floor") {
        say("floor: raw server-side-apply ConfigMap writes");
        floor = write_floor(&client, plane, scale).await?;
        say(format!("floor: {:.0} writes/s", f(&floor["writes_per_s"])));
    }

    let (mut throughput, mut latency) = (Value::Null, Value::Null);
    let mut baseline_rss = None;
    if wants("throughput") || wants("latency") {
        let mut operator = Operator::start(plane, bin, &logs.join("operator-1.log")).await?;
        operator.wait_ready(Duration::from_secs(60)).await?;
        // What the operator weighs with nothing to cache.
        tokio::time::sleep(Duration::from_secs(1)).await;
        baseline_rss = Some(operator.memory_kib().0 as f64 / 1024.0);
        if wants("throughput") {
            say(format!("throughput: {} CRs at once", scale.throughput));
            throughput = self::throughput(&client, plane, scale).await?;
            say(format!(
                "throughput: {:.0} changes/s",
                f(&throughput["changes_per_s"])
            ));
        }
        if wants("latency") {
            say(format!(
                "latency: {} changes at {}/s, interleaved with the floor",
                scale.latency_changes, scale.rate_per_s
            ));
            latency = self::latency(&client, plane, &operator, scale).await?;
            say(format!(
                "latency: p99 {:.1} ms, floor p99 {:.1} ms",
                f(&latency["projection_ms"]["p99"]),
                f(&latency["floor_ms"]["p99"])
            ));
        }
        if let Some((_, metrics)) = operator.get("/metrics").await {
            let _ = std::fs::write(logs.join("operator-1.metrics"), metrics);
        }
        operator.stop();
    }

    // Only the seeded objects remain for the restarts.
    for ns in [&throughput["namespace"], &latency["namespace"]] {
        let Some(ns) = ns.as_str() else { continue };
        let lp = ListParams::default();
        Api::<RuntimeConfig>::namespaced(client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &lp)
            .await?;
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &lp)
            .await?;
    }
    if !wants("cold") {
        return Ok(json!({"environment": environment, "floor": floor,
            "throughput": throughput, "latency": latency, "core": core_estimates()}));
    }

    let seed_ns = plane.namespace("seeded").await?;
    let mut cold = Vec::new();
    let mut seeded = 0;
    for (i, total) in [scale.small, scale.large].into_iter().enumerate() {
        let started = Instant::now();
        say(format!(
            "seeding {} converged CRs with {HISTORY} snapshots each",
            total - seeded
        ));
        seed(&client, &seed_ns, seeded..total, scale.in_flight).await?;
        say(format!(
            "seeded {total} in {:.0}s",
            started.elapsed().as_secs_f64()
        ));
        seeded = total;
        let log = logs.join(format!("operator-{}.log", i + 2));
        let figure = cold_start(&client, plane, bin, &log, total).await?;
        say(format!(
            "cold start {total}: ready {:.2}s, reconciled {:.2}s, {} writes, RSS {:.1} MiB (raw {:.1} MiB)",
            f(&figure["ready_s"]),
            f(&figure["reconciled_s"]),
            figure["writes"],
            f(&figure["rss_mib"]),
            f(&figure["raw_mib"])
        ));
        cold.push(figure);
    }
    say(format!("{SHARDS} shards over the {seeded} seeded CRs"));
    let shards = sharded(plane, bin, logs, &seed_ns, seeded).await?;
    hold(plane).await;

    let core = core_estimates();
    Ok(json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "mode": if bench { "bench" } else { "smoke" },
        "environment": environment,
        "scale": {
            "latency_changes": scale.latency_changes,
            "rate_per_s": scale.rate_per_s,
            "throughput_crs": scale.throughput,
            "floor_writes": scale.floor_writes,
            "in_flight": scale.in_flight,
            "cold_start_crs": [scale.small, scale.large],
            "keys_per_cr": KEYS,
            "history_snapshots": HISTORY,
        },
        "floor": floor,
        "throughput": throughput,
        "latency": latency,
        "empty_rss_mib": baseline_rss,
        "cold_start": cold,
        "shards": shards,
        "core": core,
    }))
}

/// With `HOTCONF_BENCH_HOLD` set, keeps the control plane with the seeded objects up for a look
/// (profiling a start-up by hand) until the file it names is removed.
async fn hold(plane: &ControlPlane) {
    let Some(marker) = std::env::var_os("HOTCONF_BENCH_HOLD").filter(|m| !m.is_empty()) else {
        return;
    };
    let marker = PathBuf::from(marker);
    if std::fs::write(&marker, plane.kubeconfig_path().display().to_string()).is_err() {
        return;
    }
    say(format!(
        "holding the control plane (kubeconfig {}) until {} is removed",
        plane.kubeconfig_path().display(),
        marker.display()
    ));
    while marker.exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

async fn environment(client: &Client, plane: &ControlPlane) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "os": os,
        "apiserver": version,
        "etcd_data": plane.dir().join("etcd").display().to_string(),
        "etcd_on_tmpfs": plane.dir().starts_with("/dev/shm"),
        "controller_manager": false,
    })
}

// ---------------------------------------------------------------------------------------------
// The operator under test
// ---------------------------------------------------------------------------------------------

struct Operator {
    process: Process,
    port: u16,
    started: Instant,
}

impl Operator {
    async fn start(plane: &ControlPlane, bin: &Path, log: &Path) -> anyhow::Result<Operator> {
        Self::start_with(plane, bin, log, &[]).await
    }

    async fn start_with(
        plane: &ControlPlane,
        bin: &Path,
        log: &Path,
        extra: &[String],
    ) -> anyhow::Result<Operator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut args = vec![
            "operator".to_string(),
            format!("--admin-addr=127.0.0.1:{port}"),
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let process = plane.spawn("hotconf-operator", bin, &args, OPERATOR_USER, log)?;
        Ok(Operator {
            process,
            port,
            started,
        })
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// Waits for `/readyz` to answer 200 and returns the time since the start.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return Ok(self.started.elapsed());
            }
            if !self.process.running() && self.started.elapsed() > Duration::from_secs(1) {
                bail!("the operator exited; see {}", self.process.log().display());
            }
            if Instant::now() > deadline {
                bail!("the operator was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `hotconf_reconciles_total`, summed over kinds and results.
    async fn reconciles(&self) -> f64 {
        let Some((200, body)) = self.get("/metrics").await else {
            return f64::NAN;
        };
        body.lines()
            .filter(|l| l.starts_with("hotconf_reconciles_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// VmRSS and VmHWM of the operator process (not its supervisor), in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = self
            .process
            .pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The CPU time the operator process has used so far (user and system), in seconds.
    fn cpu_s(&self) -> f64 {
        let stat = self
            .process
            .pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .unwrap_or_default();
        // After the command's `(...)`: state is field 3, utime and stime fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        match (ticks(11), ticks(12)) {
            // Linux reports in USER_HZ, 100 on every architecture it runs on here.
            (Some(user), Some(system)) => (user + system) / 100.0,
            _ => f64::NAN,
        }
    }

    fn stop(&mut self) {
        self.process.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Watch recorders: when each (object, value) was first seen
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Seen {
    first: Arc<Mutex<HashMap<(String, String), Instant>>>,
    synced: Arc<AtomicBool>,
}

impl Seen {
    fn get(&self, name: &str, value: &str) -> Option<Instant> {
        self.first
            .lock()
            .expect("lock")
            .get(&(name.to_string(), value.to_string()))
            .copied()
    }

    /// The first times of `value` over all names.
    fn with_value(&self, value: &str) -> Vec<Instant> {
        self.first
            .lock()
            .expect("lock")
            .iter()
            .filter(|((_, v), _)| v == value)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Every (value, first time) of one name.
    fn of(&self, name: &str) -> Vec<(String, Instant)> {
        self.first
            .lock()
            .expect("lock")
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, v), t)| (v.clone(), *t))
            .collect()
    }

    async fn wait_synced(&self) {
        while !self.synced.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Watches `api` and records when each object first showed each value of `key`.
fn record<K>(
    api: Api<K>,
    config: watcher::Config,
    key: impl Fn(&K) -> Option<String> + Send + 'static,
) -> (Seen, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let seen = Seen::default();
    let recorder = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    if let Some(value) = key(&o) {
                        recorder
                            .first
                            .lock()
                            .expect("lock")
                            .entry((o.name_any(), value))
                            .or_insert(now);
                    }
                }
                Ok(watcher::Event::InitDone) => recorder.synced.store(true, Ordering::Release),
                _ => {}
            }
        }
    });
    (seen, task)
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

fn hash_of(version: u64) -> String {
    let spec = fixtures::runtime_config_spec(KEYS, version);
    document::hash(&document::runtime_config(&spec, &BTreeMap::new(), chrono::Utc::now()).document)
}

/// A ConfigMap like a projected one (the rendered document of a benchmark CR), unmanaged.
fn plain_config_map(name: &str, seq: usize) -> ConfigMap {
    let spec = fixtures::runtime_config_spec(KEYS, seq as u64);
    let doc = document::runtime_config(&spec, &BTreeMap::new(), chrono::Utc::now()).document;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(BTreeMap::from([
                (SEQ.to_string(), seq.to_string()),
                (names::HASH.to_string(), document::hash(&doc)),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "config.yaml".to_string(),
            document::render(&doc, hotconf::crd::Format::Yaml),
        )])),
        ..Default::default()
    }
}

fn bench_cr(name: &str, version: u64) -> RuntimeConfig {
    fixtures::runtime_config(name, KEYS, version)
}

fn bench_post() -> PostParams {
    PostParams {
        field_manager: Some(BENCH_MANAGER.into()),
        ..Default::default()
    }
}

fn count_by_resource(writes: &[control_plane::AuditEntry]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for w in writes {
        let key = if w.subresource.is_empty() {
            w.resource.clone()
        } else {
            format!("{}/{}", w.resource, w.subresource)
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Writes that are not Events: what SPEC §5.9 bounds per change.
fn object_writes(writes: &[control_plane::AuditEntry]) -> usize {
    writes.iter().filter(|w| w.resource != "events").count()
}

// ---------------------------------------------------------------------------------------------
// Floor: raw server-side-apply writes per second by a plain client
// ---------------------------------------------------------------------------------------------

async fn write_floor(client: &Client, plane: &ControlPlane, scale: Scale) -> anyhow::Result<Value> {
    let ns = plane.namespace("floor").await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply(BENCH_MANAGER).force();
    let mut rounds = Vec::new();
    // A round of creates, then a round of updates of the same objects.
    for round in 0..2 {
        let started = Instant::now();
        futures::stream::iter(0..scale.floor_writes)
            .map(|i| {
                let api = api.clone();
                let apply = apply.clone();
                async move {
                    let name = format!("floor-{i:05}");
                    let cm = plain_config_map(&name, i + round * 100_000);
                    api.patch(&name, &apply, &Patch::Apply(&cm)).await
                }
            })
            .buffer_unordered(scale.in_flight)
            .try_collect::<Vec<_>>()
            .await?;
        rounds.push(scale.floor_writes as f64 / started.elapsed().as_secs_f64());
    }
    let writes_per_s = 2.0 / (1.0 / rounds[0] + 1.0 / rounds[1]);

    // What one change costs the server besides: the user's CR create, and the first status
    // write (server-side apply of what `reconcile::plan` gives, as the operator sends it).
    let crs: Api<RuntimeConfig> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let created: Vec<RuntimeConfig> = futures::stream::iter(0..scale.floor_writes)
        .map(|i| {
            let crs = crs.clone();
            async move {
                crs.create(&bench_post(), &bench_cr(&format!("floor-{i:05}"), 1))
                    .await
            }
        })
        .buffer_unordered(scale.in_flight)
        .try_collect()
        .await?;
    let cr_creates_per_s = scale.floor_writes as f64 / started.elapsed().as_secs_f64();
    // Half by server-side apply, as the operator writes, half by a JSON merge patch of the same
    // body: what the status write would cost without server-side apply.
    let mut created = created;
    let by_merge = created.split_off(created.len() / 2);
    let mut status_rates = Vec::new();
    for (objects, apply) in [(created, true), (by_merge, false)] {
        let count = objects.len();
        let started = Instant::now();
        futures::stream::iter(objects)
            .map(|obj| {
                let crs = crs.clone();
                async move {
                    let observed = Observed {
                        now: chrono::Utc::now(),
                        ..Default::default()
                    };
                    let body = json!({
                        "apiVersion": RuntimeConfig::api_version(&()),
                        "kind": RuntimeConfig::kind(&()),
                        "status": reconcile::plan(&obj, &observed).status,
                    });
                    let (params, patch) = if apply {
                        (PatchParams::apply(MANAGER).force(), Patch::Apply(&body))
                    } else {
                        (PatchParams::default(), Patch::Merge(&body))
                    };
                    crs.patch_status(&obj.name_any(), &params, &patch).await
                }
            })
            .buffer_unordered(scale.in_flight)
            .try_collect::<Vec<_>>()
            .await?;
        status_rates.push(count as f64 / started.elapsed().as_secs_f64());
    }
    let (status_applies_per_s, status_merges_per_s) = (status_rates[0], status_rates[1]);
    crs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    // Every change costs a CR create, a ConfigMap apply, a status apply and an Event create (a
    // write like a ConfigMap's): the most this server can carry, whoever writes.
    let ceiling = 1.0 / (1.0 / cr_creates_per_s + 2.0 / rounds[0] + 1.0 / status_applies_per_s);
    Ok(json!({
        "namespace": ns,
        "writes": 2 * scale.floor_writes,
        "in_flight": scale.in_flight,
        "create_per_s": rounds[0],
        "update_per_s": rounds[1],
        "writes_per_s": writes_per_s,
        "cr_creates_per_s": cr_creates_per_s,
        "status_applies_per_s": status_applies_per_s,
        "status_merge_patches_per_s": status_merges_per_s,
        "change_ceiling_per_s": ceiling,
    }))
}

// ---------------------------------------------------------------------------------------------
// Throughput: CRs created at once → all projected
// ---------------------------------------------------------------------------------------------

async fn throughput(client: &Client, plane: &ControlPlane, scale: Scale) -> anyhow::Result<Value> {
    let ns = plane.namespace("throughput").await?;
    let n = scale.throughput;
    let (cms, cm_task) = record(
        Api::<ConfigMap>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&format!("{}=hotconf", names::MANAGED_BY)),
        |cm| annotation(&cm.metadata, names::REVISION),
    );
    let (crs, cr_task) = record(
        Api::<RuntimeConfig>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
        |o: &RuntimeConfig| {
            let s = o.status.as_ref()?;
            (s.observed_generation == o.metadata.generation)
                .then(|| s.current_revision.map(|r| r.to_string()))
                .flatten()
        },
    );
    cms.wait_synced().await;
    crs.wait_synced().await;
    let audit_before = plane.audit_writes(OPERATOR_USER).len();

    let api: Api<RuntimeConfig> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&bench_post(), &bench_cr(&format!("cr-{i:05}"), 1))
                    .await
            }
        })
        .buffer_unordered(scale.in_flight)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    wait_until(
        "every CR to be projected and its status written",
        Duration::from_secs(600),
        || cms.with_value("1").len() >= n && crs.with_value("1").len() >= n,
    )
    .await?;
    let last = |times: Vec<Instant>| {
        times
            .into_iter()
            .max()
            .map(|t| t - started)
            .unwrap_or_default()
    };
    let projected = last(cms.with_value("1"));
    let done = last(crs.with_value("1"));
    cm_task.abort();
    cr_task.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<_> = plane.audit_writes(OPERATOR_USER)[audit_before..]
        .iter()
        .filter(|w| w.namespace == ns)
        .cloned()
        .collect();
    Ok(json!({
        "namespace": ns,
        "crs": n,
        "in_flight": scale.in_flight,
        "creates_returned_s": created.as_secs_f64(),
        "all_configmaps_s": projected.as_secs_f64(),
        "all_status_s": done.as_secs_f64(),
        "changes_per_s": n as f64 / done.as_secs_f64(),
        "operator_writes": count_by_resource(&writes),
        "operator_object_writes_per_change": object_writes(&writes) as f64 / n as f64,
    }))
}

// ---------------------------------------------------------------------------------------------
// Latency and discipline: a steady stream of changes, interleaved with the floor
// ---------------------------------------------------------------------------------------------

fn percentiles(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return json!({"samples": 0});
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((samples.len() as f64) * p).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    json!({
        "samples": samples.len(),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": samples.last().copied().unwrap_or(0.0),
        "mean": samples.iter().sum::<f64>() / samples.len().max(1) as f64,
    })
}

/// For change `i` (patch returned at `returned[i]`), the first watch event that carries change
/// `i` or a later one (a later change can overtake an earlier one), in milliseconds.
fn latencies(returned: &[Instant], events: &[(usize, Instant)]) -> Vec<f64> {
    returned
        .iter()
        .enumerate()
        .filter_map(|(i, at)| {
            let seen = events
                .iter()
                .filter(|(j, _)| *j >= i)
                .map(|(_, t)| *t)
                .min()?;
            Some(seen.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect()
}

async fn latency(
    client: &Client,
    plane: &ControlPlane,
    operator: &Operator,
    scale: Scale,
) -> anyhow::Result<Value> {
    let ns = plane.namespace("latency").await?;
    let n = scale.latency_changes;
    let crs: Api<RuntimeConfig> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let (seen, task) = record(cms.clone(), watcher::Config::default(), |cm| {
        annotation(&cm.metadata, SEQ).or_else(|| annotation(&cm.metadata, names::HASH))
    });
    seen.wait_synced().await;
    // Change i sets the counter to i + 1; the first version is projected before the run.
    let hashes: HashMap<String, usize> = (0..=n).map(|i| (hash_of(i as u64 + 1), i)).collect();
    crs.create(&bench_post(), &bench_cr("latency", 1)).await?;
    let apply = PatchParams::apply(BENCH_MANAGER).force();
    cms.patch(
        "latency-floor",
        &apply,
        &Patch::Apply(&plain_config_map("latency-floor", 0)),
    )
    .await?;
    let first = hash_of(1);
    wait_until("the first projection", Duration::from_secs(60), || {
        seen.get("latency", &first).is_some() && seen.get("latency-floor", "0").is_some()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let audit_before = plane.audit_writes(OPERATOR_USER).len();
    let reconciles_before = operator.reconciles().await;
    let interval = Duration::from_secs_f64(1.0 / scale.rate_per_s);
    let mut cr_returned = Vec::with_capacity(n);
    let mut floor_sent = Vec::with_capacity(n);
    let mut floor_returned = Vec::with_capacity(n);
    let started = tokio::time::Instant::now();
    for i in 1..=n {
        let slot = started + interval * (i as u32);
        tokio::time::sleep_until(slot).await;
        let patch = json!({"spec": {"values": {fixtures::COUNTER: i + 1}}});
        crs.patch("latency", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        cr_returned.push(Instant::now());
        tokio::time::sleep_until(slot + interval / 2).await;
        floor_sent.push(Instant::now());
        cms.patch(
            "latency-floor",
            &apply,
            &Patch::Apply(&plain_config_map("latency-floor", i)),
        )
        .await?;
        floor_returned.push(Instant::now());
    }
    let last = hash_of(n as u64 + 1);
    wait_until("the last projection", Duration::from_secs(60), || {
        seen.get("latency", &last).is_some() && seen.get("latency-floor", &n.to_string()).is_some()
    })
    .await?;
    // Let trailing reconciles finish and the audit log catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reconciles = operator.reconciles().await - reconciles_before;
    let writes: Vec<_> = plane.audit_writes(OPERATOR_USER)[audit_before..]
        .iter()
        .filter(|w| w.namespace == ns)
        .cloned()
        .collect();
    task.abort();

    let cr_events: Vec<(usize, Instant)> = seen
        .of("latency")
        .into_iter()
        .filter_map(|(hash, t)| Some((*hashes.get(&hash)?, t)))
        .filter(|(i, _)| *i >= 1)
        .map(|(i, t)| (i - 1, t))
        .collect();
    let floor_events: Vec<(usize, Instant)> = seen
        .of("latency-floor")
        .into_iter()
        .filter_map(|(seq, t)| Some((seq.parse::<usize>().ok()?, t)))
        .filter(|(i, _)| *i >= 1)
        .map(|(i, t)| (i - 1, t))
        .collect();
    let projection = latencies(&cr_returned, &cr_events);
    // The floor counts from the request's start: one write and its watch delivery, the least a
    // projection can take (its watch event often arrives before the response is read).
    let floor = latencies(&floor_sent, &floor_events);
    let floor_from_return = latencies(&floor_returned, &floor_events);
    let n_f = n as f64;
    Ok(json!({
        "namespace": ns,
        "changes": n,
        "rate_per_s": scale.rate_per_s,
        "revisions_seen": cr_events.len(),
        "projection_ms": percentiles(projection),
        "floor_ms": percentiles(floor),
        "floor_from_response_ms": percentiles(floor_from_return),
        "operator_writes": count_by_resource(&writes),
        "writes_per_change": object_writes(&writes) as f64 / n_f,
        "event_writes_per_change": (writes.len() - object_writes(&writes)) as f64 / n_f,
        "reconciles_per_change": reconciles / n_f,
    }))
}

// ---------------------------------------------------------------------------------------------
// Seeding converged objects with the library's own plan, and the cold start over them
// ---------------------------------------------------------------------------------------------

/// Creates CRs `seed-<i>` for `range`, each with the status (10 snapshots from 10 successive
/// specs) and the ConfigMap that `reconcile::plan` says the operator wants: a converged state.
async fn seed(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let check = range.start;
    futures::stream::iter(range)
        .map(|i| seed_one(client, ns, i))
        .buffer_unordered(in_flight)
        .try_collect::<Vec<_>>()
        .await?;
    check_converged(client, ns, &format!("seed-{check:05}")).await
}

async fn seed_one(client: &Client, ns: &str, i: usize) -> anyhow::Result<()> {
    let crs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let name = format!("seed-{i:05}");
    let mut obj = bench_cr(&name, HISTORY);
    // Assigned to a shard as the sharder would (the unsharded operator ignores the label).
    obj.labels_mut()
        .insert(SHARD_LABEL.into(), format!("shard-{}", i % SHARDS));
    let mut obj = crs.create(&bench_post(), &obj).await?;
    let latest = obj.spec.clone();
    let mut observed = Observed {
        now: chrono::Utc::now() - chrono::Duration::minutes(HISTORY as i64 + 1),
        ..Default::default()
    };
    let mut config_map = None;
    for version in 1..=HISTORY {
        obj.spec = fixtures::runtime_config_spec(KEYS, version);
        observed.now += chrono::Duration::minutes(1);
        let plan = reconcile::plan(&obj, &observed);
        obj.status = Some(plan.status);
        if let Some(cm) = plan.config_map {
            observed.config_map = Some(cm.clone());
            config_map = Some(cm);
        }
    }
    debug_assert_eq!(obj.spec, latest);
    let apply = PatchParams::apply(MANAGER).force();
    let cm = config_map.context("the plan projects a ConfigMap")?;
    cms.patch(&cm.name_any(), &apply, &Patch::Apply(&cm))
        .await?;
    let body = json!({
        "apiVersion": RuntimeConfig::api_version(&()),
        "kind": RuntimeConfig::kind(&()),
        "status": obj.status,
    });
    crs.patch_status(&name, &apply, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// The cold start over `total` converged objects (100,000 in the benchmark) on a control plane
/// of its own, whose CRD server keeps no watch cache: the 1.36 CRD server's cache holds about
/// 100 KiB per seeded CR, 10 GB here, which with its garbage collector's headroom is more than
/// this machine has. Without a cache the server answers the operator's list page by page from
/// etcd (`health::list` asks for pages of `--list-page-size`). One CR is seeded through the API
/// as the others are, then copied straight into etcd: the API takes 60 objects/s here.
async fn huge(bin: &Path, logs: &Path, total: usize) -> anyhow::Result<Value> {
    let plane = ControlPlane::start(Options {
        controller_manager: false,
        users: Vec::new(),
        crds: vec![repo().join("crds")],
        custom_resource_watch_cache: false,
        // 100,000 CRs of 17 KiB and their ConfigMaps are about 2 GB, and etcd's pages more.
        etcd_quota_bytes: 8 << 30,
        ..Options::default()
    })
    .await
    .context("starting the control plane for the largest run")?;
    let result = huge_on(&plane, bin, logs, total).await;
    if result.is_err() {
        plane.print_logs();
    }
    result
}

async fn huge_on(
    plane: &ControlPlane,
    bin: &Path,
    logs: &Path,
    total: usize,
) -> anyhow::Result<Value> {
    let client = plane.client().await?;
    let ns = plane.namespace("seeded").await?;
    let started = Instant::now();
    seed(&client, &ns, 0..1, 1).await?;
    let template = format!("seed-{:05}", 0);
    let copies: Vec<_> = (1..total)
        .map(|i| {
            let labels = [(SHARD_LABEL.to_string(), format!("shard-{}", i % SHARDS))];
            (format!("seed-{i:05}"), labels.into_iter().collect())
        })
        .collect();
    plane.copy_converged(&ns, &template, &copies).await?;
    for i in [1, total / 2, total - 1] {
        check_converged(&client, &ns, &format!("seed-{i:05}")).await?;
    }
    say(format!(
        "seeded {total} in {:.0}s (copies of one, straight into etcd)",
        started.elapsed().as_secs_f64()
    ));
    let log = logs.join("operator-huge.log");
    let mut figure = cold_start(&client, plane, bin, &log, total).await?;
    figure["crd_server_watch_cache"] = json!(false);
    hold(plane).await;
    say(format!(
        "cold start {total}: ready {:.2}s, reconciled {:.2}s, {} writes, {} reads, RSS {:.1} MiB (raw {:.1} MiB)",
        f(&figure["ready_s"]),
        f(&figure["reconciled_s"]),
        figure["writes"],
        figure["reads"],
        f(&figure["rss_mib"]),
        f(&figure["raw_mib"])
    ));
    Ok(figure)
}

/// `SHARDS` operators sharing the seeded objects by their shard label (kubernetes-controller-
/// sharding's protocol, see docs/install.md): each one's start-up and RSS once all have settled,
/// beside the one replica's over all of them.
async fn sharded(
    plane: &ControlPlane,
    bin: &Path,
    logs: &Path,
    ns: &str,
    objects: usize,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut shards = Vec::new();
    for i in 0..SHARDS {
        let args = [
            format!("--controller-ring={RING}"),
            format!("--lease-namespace={ns}"),
            format!("--lease-identity=shard-{i}"),
        ];
        let log = logs.join(format!("shard-{i}.log"));
        shards.push(Operator::start_with(plane, bin, &log, &args).await?);
    }
    let mut ready = Vec::new();
    for shard in &shards {
        ready.push(shard.wait_ready(Duration::from_secs(600)).await?);
    }
    // Settled: every object reconciled (by its shard), and the counters still for 3 s.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0.0, Instant::now());
    loop {
        let mut total = 0.0;
        for shard in &shards {
            total += shard.reconciles().await;
        }
        if total > last.0 {
            last = (total, Instant::now());
        }
        if total >= objects as f64 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{SHARDS} shards did not reconcile {objects} objects within 600s ({total})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    for (shard, ready) in shards.iter_mut().zip(ready) {
        let (rss, hwm) = shard.memory_kib();
        out.push(json!({
            "ready_s": ready.as_secs_f64(),
            "reconciles": shard.reconciles().await,
            "rss_mib": rss as f64 / 1024.0,
            "peak_rss_mib": hwm as f64 / 1024.0,
        }));
        shard.stop();
    }
    Ok(json!({
        "shards": SHARDS,
        "objects": objects,
        "settled_s": (last.1 - started).as_secs_f64(),
        "each": out,
    }))
}

/// Fails unless a reconcile of `name` as the API server has it would write nothing.
async fn check_converged(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let obj: RuntimeConfig = Api::namespaced(client.clone(), ns).get(name).await?;
    let observed = Observed {
        config_map: Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?,
        now: chrono::Utc::now(),
        ..Default::default()
    };
    let plan = reconcile::plan(&obj, &observed);
    let history = obj.config_status().map(|s| s.history.len()).unwrap_or(0);
    if plan.status_changed || plan.config_map.is_some() || history != HISTORY as usize {
        bail!(
            "seeded {name} is not converged (history {history}): status changed {}, ConfigMap write {}",
            plan.status_changed,
            plan.config_map.is_some()
        );
    }
    Ok(())
}

/// What the operator's caches keep of a listed object, as JSON: of a CR all but the snapshot
/// documents and managedFields' field sets; of a projected ConfigMap its metadata, less the
/// same field sets. (An estimate of what is held: the caches keep parsed objects.)
fn cached_part(item: &Value) -> Value {
    let mut kept = item.clone();
    let strip = |meta: &mut Value| {
        for m in meta["managedFields"].as_array_mut().into_iter().flatten() {
            m["fieldsV1"] = Value::Null;
        }
    };
    if item["kind"] == "ConfigMap" || item.get("data").is_some() {
        kept = json!({"metadata": item["metadata"].clone()});
    }
    strip(&mut kept["metadata"]);
    for s in kept["status"]["history"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        s["document"] = Value::Null;
    }
    kept
}

/// The JSON size of every item of a list, following `continue`; of what the operator's caches
/// keep of them ([`cached_part`]), as JSON and LZ4-packed as the caches pack it.
async fn raw_size(client: &Client, path: &str) -> anyhow::Result<Sizes> {
    let mut sizes = Sizes::default();
    let mut token = String::new();
    loop {
        // As the operator asks: the first page at any resourceVersion (a watch cache answers it
        // whole), the next ones by their token.
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match token.is_empty() {
            true => {
                format!("{path}{sep}limit=500&resourceVersion=0&resourceVersionMatch=NotOlderThan")
            }
            false => format!("{path}{sep}limit=500&continue={token}"),
        };
        let fetching = Instant::now();
        let text = client
            .request_text(http::Request::get(url).body(Vec::new())?)
            .await?;
        sizes.list_s += fetching.elapsed().as_secs_f64();
        let list: Value = serde_json::from_str(&text)?;
        drop(text);
        for item in list["items"].as_array().into_iter().flatten() {
            let kept = serde_json::to_vec(&cached_part(item))?;
            sizes.bytes += fixtures::json_len(item);
            sizes.cached += kept.len();
            sizes.packed += lz4_flex::block::compress_prepend_size(&kept).len();
            sizes.items += 1;
        }
        match list["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok(sizes),
        }
    }
}

#[derive(Default)]
struct Sizes {
    // How long the pages took to arrive, whole (not parsed).
    list_s: f64,
    bytes: usize,
    items: usize,
    cached: usize,
    packed: usize,
}

async fn cold_start(
    client: &Client,
    plane: &ControlPlane,
    bin: &Path,
    log: &Path,
    objects: usize,
) -> anyhow::Result<Value> {
    let audit_before = plane.audit_writes(OPERATOR_USER).len();
    let reads_before = plane.audit_reads(OPERATOR_USER).len();
    let mut operator = Operator::start(plane, bin, log).await?;
    let ready = operator.wait_ready(Duration::from_secs(600)).await?;
    // Every object is reconciled at least once; duplicates (a CR triggered by its own listing and
    // by its ConfigMap's) count too, so "settled" is the last move of the counter.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut reached = None;
    let mut last = (0.0, operator.started.elapsed());
    loop {
        let count = operator.reconciles().await;
        let at = operator.started.elapsed();
        if count > last.0 {
            last = (count, at);
        }
        if reached.is_none() && count >= objects as f64 {
            reached = Some(at);
        }
        if reached.is_some() && at - last.1 > Duration::from_secs(3) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{objects} objects were not reconciled within 600s (count {count})");
        }
        if at.as_secs() != (at - Duration::from_millis(50)).as_secs() && at.as_secs() % 5 == 0 {
            say(format!("  {:.0}s: {count} reconciles", at.as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss, hwm) = operator.memory_kib();
    let cpu_s = operator.cpu_s();
    if let Some((_, metrics)) = operator.get("/metrics").await {
        let _ = std::fs::write(log.with_extension("metrics"), metrics);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes: Vec<_> = plane.audit_writes(OPERATOR_USER)[audit_before..].to_vec();
    // Reads of ConfigMaps, Secrets and CRs: a GET of one object, or a page of a listing.
    let reads: Vec<_> = plane.audit_reads(OPERATOR_USER)[reads_before..].to_vec();
    operator.stop();

    let rcs = raw_size(client, "/apis/hotconf.dev/v1alpha1/runtimeconfigs").await?;
    let pbs = raw_size(client, "/apis/hotconf.dev/v1alpha1/poolbudgets").await?;
    let cms = raw_size(
        client,
        &format!(
            "/api/v1/configmaps?labelSelector={}%3Dhotconf",
            names::MANAGED_BY
        ),
    )
    .await?;
    let mib = |b: f64| b / 1024.0 / 1024.0;
    let raw = (rcs.bytes + pbs.bytes + cms.bytes) as f64;
    let allowance = 0.5 * mib(raw) + 20.0;
    let rss_mib = rss as f64 / 1024.0;
    Ok(json!({
        "objects": objects,
        "ready_s": ready.as_secs_f64(),
        "reconciled_s": reached.unwrap_or_default().as_secs_f64(),
        "settled_s": last.1.as_secs_f64(),
        "reconciles": last.0,
        // The server's part: a plain client paging through the same CRs (500 at a time, each
        // page read whole, unparsed), after the cold start.
        "list_crs_s": rcs.list_s,
        "operator_cpu_s": cpu_s,
        "writes": writes.len(),
        "writes_by_resource": count_by_resource(&writes),
        "reads": reads.len(),
        "reads_per_object": reads.len() as f64 / objects.max(1) as f64,
        "reads_by_resource": count_by_resource(&reads),
        "rss_mib": rss_mib,
        "peak_rss_mib": hwm as f64 / 1024.0,
        "raw_mib": mib(raw),
        "raw_crs_mib": mib((rcs.bytes + pbs.bytes) as f64),
        "raw_configmaps_mib": mib(cms.bytes as f64),
        // What the caches keep, as JSON and as packed (an estimate: the operator's slimming keeps
        // a little of managedFields' field sets); the rest of RSS is the process itself, the
        // identities kept beside, reconciles in flight and the allocator.
        "cached_crs_mib": mib((rcs.cached + pbs.cached) as f64),
        "cached_configmaps_mib": mib(cms.cached as f64),
        "packed_crs_mib": mib((rcs.packed + pbs.packed) as f64),
        "packed_configmaps_mib": mib(cms.packed as f64),
        "listed": {"crs": rcs.items + pbs.items, "configmaps": cms.items},
        "allowance_mib": allowance,
        "rss_over_allowance": rss_mib / allowance,
    }))
}

// ---------------------------------------------------------------------------------------------
// Core speed, from criterion's estimates
// ---------------------------------------------------------------------------------------------

fn core_estimates() -> Value {
    let dir = out_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    for id in [
        "runtimeconfig_200_keys",
        "poolbudget_full",
        "plan_converged_20_keys_10_snapshots",
    ] {
        let path = dir.join(format!("criterion/core/{id}/new/estimates.json"));
        let mean = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["mean"]["point_estimate"].as_f64());
        out.insert(id.to_string(), json!(mean.map(|ns| ns / 1000.0)));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

struct Row {
    figure: String,
    measured: String,
    reference: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn row(figure: impl Into<String>, measured: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        reference: String::new(),
        ratio: String::new(),
        target: String::new(),
        met: None,
    }
}

impl Row {
    fn reference(mut self, r: impl Into<String>) -> Row {
        self.reference = r.into();
        self
    }
    fn ratio(mut self, r: f64) -> Row {
        self.ratio = format!("{r:.2}×");
        self
    }
    fn target(mut self, t: impl Into<String>, met: bool) -> Row {
        self.target = t.into();
        self.met = Some(met);
        self
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn rows(r: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let lat = &r["latency"];
    let (p50, p99) = (
        f(&lat["projection_ms"]["p50"]),
        f(&lat["projection_ms"]["p99"]),
    );
    let (f50, f99) = (f(&lat["floor_ms"]["p50"]), f(&lat["floor_ms"]["p99"]));
    rows.push(
        row("Projection latency p50", format!("{p50:.1} ms"))
            .reference(format!("floor p50 {f50:.1} ms"))
            .ratio(p50 / f50),
    );
    rows.push(
        row(
            format!("Projection latency p99 ({} changes)", lat["changes"]),
            format!("{p99:.1} ms"),
        )
        .reference(format!("floor p99 {f99:.1} ms"))
        .ratio(p99 / f99)
        .target("≤ 3× floor", p99 <= 3.0 * f99),
    );
    let tp = f(&r["throughput"]["changes_per_s"]);
    let floor = f(&r["floor"]["writes_per_s"]);
    rows.push(
        row(
            format!("Throughput ({} CRs at once)", r["throughput"]["crs"]),
            format!("{tp:.0} changes/s"),
        )
        .reference(format!("floor {floor:.0} SSA writes/s"))
        .ratio(tp / floor)
        .target("≥ 0.4× floor", tp >= 0.4 * floor),
    );
    let ceiling = f(&r["floor"]["change_ceiling_per_s"]);
    rows.push(
        row(
            "  server's ceiling for a change",
            format!("{ceiling:.0} changes/s"),
        )
        .reference(format!(
            "CR create {:.0}/s, status apply {:.0}/s",
            f(&r["floor"]["cr_creates_per_s"]),
            f(&r["floor"]["status_applies_per_s"])
        ))
        .ratio(tp / ceiling),
    );
    for c in r["cold_start"].as_array().into_iter().flatten() {
        let n = &c["objects"];
        rows.push(row(
            format!("Cold start {n}: /readyz"),
            format!("{:.2} s", f(&c["ready_s"])),
        ));
        let reconciled = f(&c["reconciled_s"]);
        let mut all = row(
            format!("Cold start {n}: all reconciled"),
            format!("{reconciled:.2} s"),
        )
        .reference(format!(
            "settled {:.2} s, {} reconciles; operator CPU {:.1} s; a plain client's list of the CRs {:.2} s{}",
            f(&c["settled_s"]),
            c["reconciles"],
            f(&c["operator_cpu_s"]),
            f(&c["list_crs_s"]),
            if c["crd_server_watch_cache"] == false {
                " (CRD server without watch cache)"
            } else {
                ""
            }
        ))
        .ratio(reconciled / f(&c["list_crs_s"]));
        // The targets: 5 s at 10,000, 60 s at 100,000.
        match n.as_u64().unwrap_or(0) {
            100_000.. => all = all.target("≤ 60 s", reconciled <= 60.0),
            10_000.. => all = all.target("≤ 5 s", reconciled <= 5.0),
            _ => {}
        }
        rows.push(all);
        let writes = c["writes"].as_u64().unwrap_or(u64::MAX);
        rows.push(
            row(format!("Cold start {n}: writes"), writes.to_string()).target("0", writes == 0),
        );
        let per_object = f(&c["reads_per_object"]);
        rows.push(
            row(
                format!("Cold start {n}: reads"),
                format!("{} ({per_object:.4} per object)", c["reads"]),
            )
            .reference(format!("{}", c["reads_by_resource"]))
            .target("≤ 0.01 per object", per_object <= 0.01),
        );
    }
    rows.push(
        row(
            "Memory, no CRs",
            format!("{:.1} MiB RSS", f(&r["empty_rss_mib"])),
        )
        .reference("the process itself"),
    );
    for c in r["cold_start"].as_array().into_iter().flatten() {
        let rss = f(&c["rss_mib"]);
        let allowance = f(&c["allowance_mib"]);
        rows.push(
            row(
                format!("Memory {} CRs ({HISTORY} snapshots)", c["objects"]),
                format!("{rss:.1} MiB RSS"),
            )
            .reference(format!(
                "raw {:.1} MiB → allowance {allowance:.1} MiB",
                f(&c["raw_mib"])
            ))
            .ratio(rss / allowance)
            .target("≤ 0.5 × raw + 20 MiB", rss <= allowance),
        );
        rows.push(
            row(
                format!("  of which cached, packed ({} CRs)", c["objects"]),
                format!(
                    "{:.1} MiB CRs + {:.1} MiB ConfigMap metadata ({:.1} + {:.1} MiB as JSON)",
                    f(&c["packed_crs_mib"]),
                    f(&c["packed_configmaps_mib"]),
                    f(&c["cached_crs_mib"]),
                    f(&c["cached_configmaps_mib"])
                ),
            )
            .reference(format!(
                "raw CRs {:.1} MiB, ConfigMaps {:.1} MiB; peak RSS {:.1} MiB",
                f(&c["raw_crs_mib"]),
                f(&c["raw_configmaps_mib"]),
                f(&c["peak_rss_mib"])
            )),
        );
    }
    if let Some(each) = r["shards"]["each"].as_array() {
        let rss: Vec<f64> = each.iter().map(|s| f(&s["rss_mib"])).collect();
        // The one replica over the same objects.
        let one = r["cold_start"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["objects"] == r["shards"]["objects"]))
            .map(|c| f(&c["rss_mib"]))
            .unwrap_or(f64::NAN);
        let most = rss.iter().copied().fold(0.0, f64::max);
        let list = |key: &str, digits: usize| {
            each.iter()
                .map(|s| format!("{:.digits$}", f(&s[key])))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        rows.push(
            row(
                format!(
                    "Memory per shard ({} shards, {} CRs)",
                    r["shards"]["shards"], r["shards"]["objects"]
                ),
                format!("{} MiB RSS", list("rss_mib", 1)),
            )
            .reference(format!(
                "one replica over all: {one:.1} MiB; reconciles {}, ready {} s",
                list("reconciles", 0),
                list("ready_s", 2)
            ))
            .ratio(most / one)
            .target("each below one replica", most < one),
        );
    }
    let wpc = f(&lat["writes_per_change"]);
    rows.push(
        row("Writes per change", format!("{wpc:.2}"))
            .reference(format!(
                "+ {:.2} Event writes",
                f(&lat["event_writes_per_change"])
            ))
            .target("≤ 2", wpc <= 2.0),
    );
    let rpc = f(&lat["reconciles_per_change"]);
    rows.push(row("Reconciles per change", format!("{rpc:.2}")).target("≤ 1.2", rpc <= 1.2));
    for (id, label) in [
        ("runtimeconfig_200_keys", "Core: RuntimeConfig, 200 keys"),
        ("poolbudget_full", "Core: PoolBudget, every field"),
        (
            "plan_converged_20_keys_10_snapshots",
            "Core: plan, converged, 10 snapshots",
        ),
    ] {
        let v = &r["core"][id];
        rows.push(
            row(
                label,
                match v.as_f64() {
                    Some(us) => format!("{us:.1} µs/object"),
                    None => "not run".into(),
                },
            )
            .reference(if id == "plan_converged_20_keys_10_snapshots" {
                "whole reconcile decision"
            } else {
                "validate + document + hash"
            }),
        );
    }
    rows
}

fn print_table(report: &Value) {
    let rows = rows(report);
    let header = [
        "Figure",
        "Measured",
        "Floor / reference",
        "Ratio",
        "Target",
        "Met",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.measured.clone(),
                r.reference.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..6).map(width).collect();
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let env = &report["environment"];
    println!();
    println!(
        "hotconf benchmark, {} — {} CPUs, {} GiB, {}, kube-apiserver {}, etcd {}",
        report["date"].as_str().unwrap_or_default(),
        env["cpus"],
        env["memory_gib"],
        env["os"].as_str().unwrap_or_default(),
        env["apiserver"].as_str().unwrap_or_default(),
        if env["etcd_on_tmpfs"] == true {
            "on tmpfs"
        } else {
            "on disk"
        }
    );
    println!(
        "{}",
        line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in &cells {
        println!("{}", line(c));
    }
    println!();
}
