//! Hot-reload latency of the pod side (`make bench-agent`): from the kubelet's `..data` swap to
//! the new document being visible through a client handle (`Config::watch_dir`) and to the
//! application's reload URL being called by the real `hotconf agent` binary; and, with the
//! control-plane binaries available, from a ConfigMap update on the API server to the reload
//! URL (agent `--configmap`) and to a `Config::watch_configmap` handle.
//!
//! `cargo bench --bench agent_latency` runs 1,000 swaps and 200 API updates; under `cargo test`
//! (no `--bench` argument) it runs a short smoke version. `HOTCONF_BENCH_SWAPS` and
//! `HOTCONF_BENCH_API_UPDATES` override the counts.

#[path = "../tests/agent_common/mod.rs"]
mod agent_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_common::{ReloadServer, doc, spawn_agent};
use hotconf::client::Config;
use hotconf::crd::names;
use hotconf::dev::control_plane::{ControlPlane, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};

const TARGET_SWAP_P99: Duration = Duration::from_millis(100);
const TARGET_API_P99: Duration = Duration::from_millis(500);

struct Row {
    path: &'static str,
    samples: Vec<Duration>,
    target: Option<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn print_table(rows: &mut [Row]) {
    println!();
    println!(
        "{:<44} {:>7} {:>11} {:>11} {:>11}  target p99",
        "path", "samples", "p50", "p99", "max"
    );
    println!("{}", "-".repeat(106));
    for row in rows.iter_mut() {
        if row.samples.is_empty() {
            println!("{:<44} {:>7}  (skipped)", row.path, 0);
            continue;
        }
        row.samples.sort();
        let p99 = percentile(&row.samples, 0.99);
        let verdict = match row.target {
            Some(t) if p99 < t => format!("< {} ok", ms(t)),
            Some(t) => format!("< {} MISSED", ms(t)),
            None => "-".to_string(),
        };
        println!(
            "{:<44} {:>7} {:>11} {:>11} {:>11}  {verdict}",
            row.path,
            row.samples.len(),
            ms(percentile(&row.samples, 0.50)),
            ms(p99),
            ms(*row.samples.last().unwrap()),
        );
    }
    println!();
}

fn count(var: &str, full: usize, smoke: usize, bench: bool) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { full } else { smoke })
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let swaps = count("HOTCONF_BENCH_SWAPS", 1000, 20, bench);
    let updates = count("HOTCONF_BENCH_API_UPDATES", 200, 0, bench);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = runtime.block_on(async {
        let mut rows = volume(swaps).await;
        rows.extend(api(updates).await);
        rows
    });
    print_table(&mut rows);
}

/// The kubelet's update, in two halves so that the clock starts at the `..data` rename.
fn prepare(dir: &Path, n: u64, text: &str) -> String {
    let ts = format!("..bench_{n:06}");
    std::fs::create_dir(dir.join(&ts)).unwrap();
    std::fs::write(dir.join(&ts).join("config.yaml"), text).unwrap();
    let _ = std::fs::remove_file(dir.join("..data_tmp"));
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    ts
}

fn commit(dir: &Path) -> Instant {
    let old = std::fs::read_link(dir.join("..data")).unwrap();
    let t = Instant::now();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
    t
}

async fn volume(swaps: usize) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    let output = tmp.path().join("app/config.yaml");
    hotconf::agent::volume::kubelet_write(&dir, "start", &[("config.yaml", &doc(0, "bench"))])
        .unwrap();
    let mut server = ReloadServer::start(Some(&output)).await;
    let _agent = spawn_agent(
        "bench-volume",
        &[
            format!("--watch-dir={}", dir.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            "--admin-addr=off".into(),
        ],
        &[],
    );
    let config = Config::options()
        .env_lookup(|_| None)
        .watch_dir(&dir)
        .await
        .unwrap();
    server
        .until(&doc(0, "bench"), Duration::from_secs(30))
        .await;
    let mut changes = config.changes();

    let mut visible = Vec::with_capacity(swaps);
    let mut notified = Vec::with_capacity(swaps);
    for n in 1..=swaps as u64 {
        let text = doc(n, "bench");
        prepare(&dir, n, &text);
        let t0 = commit(&dir);
        changes
            .wait_for(|_| config.get::<u64>("seq").ok() == Some(n))
            .await
            .unwrap();
        visible.push(t0.elapsed());
        let reload = server.until(&text, Duration::from_secs(10)).await;
        notified.push(reload.last().unwrap().at.duration_since(t0));
    }
    vec![
        Row {
            path: "..data swap -> visible in Config::watch_dir",
            samples: visible,
            target: Some(TARGET_SWAP_P99),
        },
        Row {
            path: "..data swap -> reload URL (agent, volume)",
            samples: notified,
            target: None,
        },
    ]
}

fn configmap(n: u64) -> (ConfigMap, String) {
    let value = agent_common::doc_value(n, "api");
    let text = doc(n, "api");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("bench-config".into()),
            annotations: Some(BTreeMap::from([
                (names::REVISION.to_string(), (n + 1).to_string()),
                (names::HASH.to_string(), hotconf::document::hash(&value)),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("config.yaml".to_string(), text.clone())])),
        ..Default::default()
    };
    (cm, text)
}

async fn api(updates: usize) -> Vec<Row> {
    let mut rows = vec![
        Row {
            path: "ConfigMap update -> reload URL (agent, API)",
            samples: Vec::new(),
            target: Some(TARGET_API_P99),
        },
        Row {
            path: "ConfigMap update -> Config::watch_configmap",
            samples: Vec::new(),
            target: Some(TARGET_API_P99),
        },
    ];
    if updates == 0 {
        return rows;
    }
    if !hotconf::dev::control_plane::asset_dir()
        .join("kube-apiserver")
        .is_file()
    {
        eprintln!("no control-plane binaries (KUBEBUILDER_ASSETS): the API rows are skipped");
        return rows;
    }
    let plane = ControlPlane::start(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await
    .expect("starting the control plane");
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("bench").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply("hotconf").force();
    let (first, text0) = configmap(0);
    cms.patch("bench-config", &apply, &Patch::Apply(&first))
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("config.yaml");
    let mut server = ReloadServer::start(Some(&output)).await;
    let kubeconfig = plane.kubeconfig_path().to_str().unwrap().to_string();
    let _agent = spawn_agent(
        "bench-api",
        &[
            format!("--configmap={ns}/bench-config"),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            "--admin-addr=off".into(),
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let config = Config::options()
        .env_lookup(|_| None)
        .watch_configmap(client.clone(), &ns, "bench-config")
        .await
        .unwrap();
    server.until(&text0, Duration::from_secs(60)).await;
    let mut changes = config.changes();
    for n in 1..=updates as u64 {
        let (cm, text) = configmap(n);
        let t0 = Instant::now();
        cms.patch("bench-config", &apply, &Patch::Apply(&cm))
            .await
            .unwrap();
        changes
            .wait_for(|_| config.get::<u64>("seq").ok() == Some(n))
            .await
            .unwrap();
        rows[1].samples.push(t0.elapsed());
        let reload = server.until(&text, Duration::from_secs(10)).await;
        rows[0]
            .samples
            .push(reload.last().unwrap().at.duration_since(t0));
    }
    rows
}
