//! The agent's health signals, each proven both ways: it goes bad under the fault and
//! recovers after. `/readyz` is 503 until a good document is handed on and 200 from then on
//! (refusals later do not take it back); `hotconf_agent_source_up{source}` drops when the
//! volume disappears or the API watch is cut or silently stalled, and comes back; a stalled
//! watch is dropped and re-established within its bound while the volume keeps serving.
//!
//! The API faults come from a TCP proxy between the real agent binary and the real API server
//! (`agent_common::proxy`): it only touches the agent's own connections, so these tests share
//! the test binary's control plane with nothing to restore.

mod agent_common;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_common::proxy::{FaultProxy, upstream_of};
use agent_common::{
    ReloadServer, doc, doc_value, free_addr, http_status, metric, wait_for, wait_reloads,
};
use common::TestEnv;
use hotconf::agent::volume::kubelet_write;
use hotconf::crd::names;
use hotconf::document;
use hotconf::projection::{self, META_KEY, Meta};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};

const CM: &str = "app-config";
/// The watch timeout and idle bound the API tests run with: short, so that a stall is
/// detected in seconds; the timeout shorter than the bound, as in production.
const WATCH_TIMEOUT: &str = "2s";
const IDLE: Duration = Duration::from_secs(5);

static STAMP: AtomicU64 = AtomicU64::new(0);

fn stamp() -> String {
    let n = STAMP.fetch_add(1, Ordering::Relaxed);
    format!("{}.{n:09}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S"))
}

/// The data the operator projects for revision `seq`: the document and its metadata key.
/// `hash` overrides the document's hash (to make a document that must be refused).
fn data(seq: u64, hash: Option<&str>) -> BTreeMap<String, String> {
    let hash = hash
        .map(str::to_string)
        .unwrap_or_else(|| document::hash(&doc_value(seq, "health")));
    let meta = Meta {
        kind: "RuntimeConfig".into(),
        name: "app".into(),
        revision: seq as i64,
        hash,
        file_name: "config.yaml".into(),
        restart_keys: Vec::new(),
        feature_flags: None,
    };
    BTreeMap::from([
        ("config.yaml".to_string(), doc(seq, "health")),
        (META_KEY.to_string(), meta.to_text()),
    ])
}

/// Mounts `data` as the kubelet does.
fn mount(dir: &Path, data: &BTreeMap<String, String>) {
    let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    kubelet_write(dir, &stamp(), &pairs).unwrap();
}

/// Writes revision `seq` to the API server as the operator does.
async fn project(api: &Api<ConfigMap>, seq: u64) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CM.into()),
            labels: Some(projection::labels("RuntimeConfig", "app")),
            annotations: Some(BTreeMap::from([
                (names::REVISION.to_string(), seq.to_string()),
                (
                    names::HASH.to_string(),
                    document::hash(&doc_value(seq, "health")),
                ),
            ])),
            ..Default::default()
        },
        data: Some(data(seq, None)),
        ..Default::default()
    };
    api.patch(
        CM,
        &PatchParams::apply("hotconf").force(),
        &Patch::Apply(&cm),
    )
    .await
    .unwrap();
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn readyz(admin: &str) -> Option<(u16, String)> {
    http_status(admin, "/readyz").await
}

async fn up(admin: &str, source: &str) -> Option<f64> {
    metric(
        admin,
        &format!("hotconf_agent_source_up{{source=\"{source}\"}}"),
    )
    .await
}

async fn restarts(admin: &str, reason: &str) -> f64 {
    metric(
        admin,
        &format!("hotconf_agent_api_watch_restarts_total{{reason=\"{reason}\"}}"),
    )
    .await
    .unwrap_or(0.0)
}

async fn wait_up(admin: &str, source: &str, value: f64, secs: u64) -> Duration {
    let t = Instant::now();
    wait_for(
        secs,
        &format!("source_up{{{source}}} = {value}"),
        || async { (up(admin, source).await? == value).then_some(()) },
    )
    .await;
    t.elapsed()
}

/// `/readyz` is 503 with a reason until a good document is handed on, 200 from then on even
/// when later documents are refused; `source_up{volume}` follows the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_good_document_and_the_volume_signal_follows_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_dir = tmp.path().join("config");
    let output = tmp.path().join("out.yaml");
    let admin = free_addr();
    let mut server = ReloadServer::start(Some(&output)).await;
    let _agent = agent_common::spawn_agent(
        "health-readiness",
        &[
            format!("--watch-dir={}", mount_dir.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            format!("--admin-addr={admin}"),
        ],
        &[],
    );

    // Nothing mounted: not ready, and the volume source is down.
    let (code, body) = wait_for(30, "the admin server", || readyz(&admin)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no document handed on yet"), "{body}");
    assert!(body.contains("volume: down"), "{body}");
    assert_eq!(up(&admin, "volume").await, Some(0.0));

    // Only a refused document: still not ready, and /readyz says why; the volume is up.
    mount(&mount_dir, &data(1, Some("sha256:not-this-one")));
    wait_reloads(&admin, "refused", 10, "the refusal", |n| n == 1.0).await;
    let (code, body) = readyz(&admin).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no good document") && body.contains("hash mismatch"),
        "{body}"
    );
    wait_up(&admin, "volume", 1.0, 10).await;
    assert!(!output.exists(), "nothing was handed on");

    // A good document: ready.
    mount(&mount_dir, &data(2, None));
    server
        .until(&doc(2, "health"), Duration::from_secs(10))
        .await;
    // Ready once the hand-off is recorded, just after the application was notified.
    let body = wait_for(5, "/readyz 200", || async {
        readyz(&admin).await.filter(|(code, _)| *code == 200)
    })
    .await
    .1;
    assert_eq!(body, "ok\n");

    // A refused document later: the last good one stays, and so does readiness.
    mount(&mount_dir, &data(3, Some("sha256:not-this-one")));
    wait_reloads(&admin, "refused", 10, "the second refusal", |n| n == 2.0).await;
    assert_eq!(readyz(&admin).await.unwrap().0, 200);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), doc(2, "health"));

    // The mount disappears: the volume source goes down (the app keeps its document, so the
    // agent stays ready); it comes back with the mount.
    let synced = metric(
        &admin,
        "hotconf_agent_source_last_sync_timestamp_seconds{source=\"volume\"}",
    )
    .await
    .expect("a last sync");
    std::fs::remove_dir_all(&mount_dir).unwrap();
    wait_up(&admin, "volume", 0.0, 10).await;
    assert_eq!(readyz(&admin).await.unwrap().0, 200);
    mount(&mount_dir, &data(4, None));
    wait_up(&admin, "volume", 1.0, 10).await;
    server
        .until(&doc(4, "health"), Duration::from_secs(10))
        .await;
    let resynced = metric(
        &admin,
        "hotconf_agent_source_last_sync_timestamp_seconds{source=\"volume\"}",
    )
    .await
    .unwrap();
    assert!(
        resynced > synced,
        "the last sync moved on: {synced} → {resynced}"
    );
}

/// An agent with both sources whose API connections go through `proxy`.
struct Rig {
    env: TestEnv,
    api: Api<ConfigMap>,
    proxy: FaultProxy,
    mount: std::path::PathBuf,
    admin: String,
    server: ReloadServer,
    _agent: agent_common::Agent,
    _tmp: tempfile::TempDir,
}

impl Rig {
    /// Revision 1 on the API server and in the volume, the agent started and holding it.
    async fn start(name: &'static str) -> Rig {
        let env = TestEnv::new(name).await;
        let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
        project(&api, 1).await;
        let tmp = tempfile::tempdir().unwrap();
        let mount_dir = tmp.path().join("config");
        mount(&mount_dir, &data(1, None));
        let output = tmp.path().join("out.yaml");
        let proxy = FaultProxy::start(upstream_of(env.plane.server())).await;
        let kubeconfig = tmp.path().join("kubeconfig");
        proxy.kubeconfig(env.plane.kubeconfig_path(), env.plane.server(), &kubeconfig);
        let admin = free_addr();
        let mut server = ReloadServer::start(Some(&output)).await;
        let agent = agent_common::spawn_agent(
            name,
            &[
                format!("--configmap={}/{CM}", env.ns),
                format!("--watch-dir={}", mount_dir.display()),
                format!("--output={}", output.display()),
                format!("--reload-url={}", server.url),
                format!("--admin-addr={admin}"),
                format!("--watch-timeout={WATCH_TIMEOUT}"),
                format!("--watch-idle-timeout={}s", IDLE.as_secs()),
            ],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        );
        let got = server
            .until(&doc(1, "health"), Duration::from_secs(30))
            .await;
        assert_eq!(got[0].body["revision"], 1);
        wait_up(&admin, "api", 1.0, 10).await;
        wait_up(&admin, "volume", 1.0, 10).await;
        Rig {
            env,
            api,
            proxy,
            mount: mount_dir,
            admin,
            server,
            _agent: agent,
            _tmp: tmp,
        }
    }

    /// While the API source is down, a newer revision through the volume is handed on.
    async fn volume_serves(&mut self, seq: u64) {
        // The API server has it too (the agent cannot see it through the fault), so the API
        // source finds it already applied when it comes back.
        project(&self.api, seq).await;
        mount(&self.mount, &data(seq, None));
        let got = self
            .server
            .until(&doc(seq, "health"), Duration::from_secs(10))
            .await;
        assert_eq!(got.last().unwrap().body["revision"], seq);
        assert_eq!(up(&self.admin, "volume").await, Some(1.0));
        assert_eq!(up(&self.admin, "api").await, Some(0.0));
        assert_eq!(readyz(&self.admin).await.unwrap().0, 200);
    }

    /// After the fault: a change made on the API server (not in the volume) reaches the app.
    async fn api_serves(&mut self, seq: u64) {
        project(&self.api, seq).await;
        let got = self
            .server
            .until(&doc(seq, "health"), Duration::from_secs(10))
            .await;
        assert_eq!(got.len(), 1, "one reload: {got:?}");
        assert_eq!(got[0].body["revision"], seq);
    }
}

/// The server-side timeout makes the agent watch again every couple of seconds, proving the
/// path; a silent stall (connections open, nothing delivered) takes `source_up{api}` to 0
/// within the idle bound, the volume serves meanwhile, and once the network heals the watch is
/// re-established on a new connection (the stalled ones stay dead) and follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_watch_is_detected_and_re_established() {
    let mut rig = Rig::start("health-stall").await;
    let admin = rig.admin.clone();
    wait_for(20, "two watches ended by the server's timeout", || async {
        (restarts(&admin, "timeout").await >= 2.0).then_some(())
    })
    .await;
    let synced = || async {
        metric(
            &admin,
            "hotconf_agent_source_last_sync_timestamp_seconds{source=\"api\"}",
        )
        .await
    };
    let before = synced().await.expect("a last sync for the API");
    // Nothing changes, yet each watch that runs to its timeout confirms the sync.
    let age = unix_now() - before;
    assert!(
        age < 4.0,
        "last API sync {age:.1}s ago with a 2 s watch timeout"
    );

    rig.proxy.stall();
    let detected = wait_up(&admin, "api", 0.0, 30).await;
    assert!(
        detected <= IDLE + Duration::from_secs(3),
        "the stall showed after {detected:?}, bound {IDLE:?}"
    );
    assert!(restarts(&admin, "stalled").await >= 1.0);
    let (code, _) = readyz(&admin).await.unwrap();
    assert_eq!(code, 200, "the app keeps its good document");
    rig.volume_serves(2).await;
    // Nothing was confirmed through the API since the stall began: the last sync is older
    // than the bound.
    let during = synced().await.unwrap();
    let age = unix_now() - during;
    assert!(
        age >= IDLE.as_secs_f64() - 0.5,
        "last API sync {age:.1}s ago"
    );
    assert!(during >= before);

    rig.proxy.heal();
    let recovered = wait_up(&admin, "api", 1.0, 30).await;
    assert!(
        recovered <= 2 * IDLE + Duration::from_secs(3),
        "re-established after {recovered:?}"
    );
    rig.api_serves(3).await;
    assert!(synced().await.unwrap() > during);
    eprintln!(
        "stall detected after {detected:?}, watch re-established {recovered:?} after the heal; ns {}",
        rig.env.ns
    );
}

/// Cut connections (closed, new ones refused) take `source_up{api}` to 0 at once; the volume
/// serves; after the heal the source lists again (backoff) and follows changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_api_connection_shows_and_heals() {
    let mut rig = Rig::start("health-cut").await;
    let admin = rig.admin.clone();
    rig.proxy.cut();
    let detected = wait_up(&admin, "api", 0.0, 10).await;
    assert!(
        detected < IDLE,
        "a cut shows before the idle bound: {detected:?}"
    );
    assert!(restarts(&admin, "error").await >= 1.0);
    rig.volume_serves(2).await;

    rig.proxy.heal();
    wait_up(&admin, "api", 1.0, 45).await;
    rig.api_serves(3).await;
    eprintln!("cut detected after {detected:?}; ns {}", rig.env.ns);
}
