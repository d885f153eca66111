//! The agent's volume source, end to end with the real `hotconf agent` binary: a directory
//! driven exactly as the kubelet drives a ConfigMap volume (timestamped directory, `..data_tmp`
//! symlink renamed over `..data`, old directory removed), the output file and a reload endpoint
//! on 127.0.0.1 as the application would see them. Against the real control plane and
//! operator: a volume-only agent learns the revision and hash from the projected ConfigMap's
//! metadata key, reports them on its Pod and is counted in `.status.consumers`.

mod agent_common;
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::{
    ReloadServer, doc, free_addr, metric, spawn_agent, verify, wait_for, wait_reloads,
};
use common::{TestEnv, eventually};
use hotconf::agent::report::Applied;
use hotconf::agent::volume::kubelet_write;
use hotconf::crd::{ConsumerStatus, RuntimeConfig, names};
use hotconf::projection::{META_KEY, Meta};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};

static STAMP: AtomicU64 = AtomicU64::new(0);

/// A kubelet-style timestamped directory name, unique in this process.
fn stamp() -> String {
    let n = STAMP.fetch_add(1, Ordering::Relaxed);
    format!("{}.{n:09}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S"))
}

fn swap(dir: &Path, text: &str) {
    kubelet_write(dir, &stamp(), &[("config.yaml", text)]).unwrap();
}

/// The kubelet's first half of an update: the new timestamped directory with its content.
fn prepare(dir: &Path, text: &str) -> String {
    let ts = format!("..{}", stamp());
    std::fs::create_dir(dir.join(&ts)).unwrap();
    std::fs::write(dir.join(&ts).join("config.yaml"), text).unwrap();
    ts
}

/// The second half: `..data_tmp` -> the new directory, renamed over `..data`, the old
/// directory removed.
fn commit(dir: &Path, ts: &str) {
    let old = std::fs::read_link(dir.join("..data")).unwrap();
    std::os::unix::fs::symlink(ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

const STEP: Duration = Duration::from_secs(10);

/// 1,000 kubelet updates — single swaps, two swaps within 10 ms, swaps that change nothing,
/// corrupt documents, and a delete-and-recreate of the whole mount — while a reader checks that
/// the output file is always one whole document. Every final state is applied and reloaded
/// exactly once; nothing is reloaded twice; a corrupt document leaves the file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_kubelet_swaps_reach_the_app_whole_and_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("app/config.yaml");
    let admin = free_addr();
    let mut server = ReloadServer::start(Some(&output)).await;
    swap(&mount, &doc(0, "final"));
    let _agent = spawn_agent(
        "volume-1000",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            format!("--admin-addr={admin}"),
        ],
        &[],
    );
    let mut reloads = server
        .until(&doc(0, "final"), Duration::from_secs(30))
        .await;

    // A reader that never stops looking at the output file.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((0u64, Vec::<String>::new())));
    let reader = {
        let (stop, seen, output) = (stop.clone(), seen.clone(), output.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&output) {
                    let mut s = seen.lock().unwrap();
                    s.0 += 1;
                    if let Err(e) = verify(&text) {
                        s.1.push(e);
                    }
                }
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };

    let started = Instant::now();
    let mut finals = vec![doc(0, "final")];
    let mut current = doc(0, "final");
    let mut refused = 0.0;
    let (mut doubles, mut close_doubles, mut noops, mut recreates) = (0, 0, 0, 0);
    for i in 1..=1000u64 {
        let next = doc(i, "final");
        match i {
            _ if i % 250 == 125 => {
                // The whole mount goes away and comes back with new content.
                std::fs::remove_dir_all(&mount).unwrap();
                swap(&mount, &next);
                recreates += 1;
            }
            _ if i % 100 == 99 => {
                // A corrupt document: refused, the file stays byte-identical.
                let before = std::fs::read(&output).unwrap();
                swap(&mount, "values: [this is not yaml\n");
                refused += 1.0;
                wait_for(10, "the refusal to be counted", || async {
                    let n =
                        metric(&admin, "hotconf_agent_reloads_total{result=\"refused\"}").await?;
                    (n >= refused).then_some(())
                })
                .await;
                assert_eq!(std::fs::read(&output).unwrap(), before, "step {i}");
                swap(&mount, &next);
            }
            _ if i % 10 == 5 => {
                // Two swaps within 10 ms: the intermediate may be skipped, the last must land.
                let a = prepare(&mount, &doc(i, "intermediate"));
                let b = prepare(&mount, &next);
                // How close together they land depends on the machine's load; either way
                // the last must be applied, and the intermediate at most once.
                let t = Instant::now();
                commit(&mount, &a);
                commit(&mount, &b);
                if t.elapsed() < Duration::from_millis(10) {
                    close_doubles += 1;
                }
                doubles += 1;
            }
            _ if i % 10 == 7 => {
                // A swap that changes nothing (new directory, same content): no reload.
                swap(&mount, &current);
                swap(&mount, &next);
                noops += 1;
            }
            _ => swap(&mount, &next),
        }
        reloads.extend(server.until(&next, STEP).await);
        finals.push(next.clone());
        current = next;
    }
    let elapsed = started.elapsed();
    // Anything late would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reloads.extend(server.drain());
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    let (reads, broken) = seen.lock().unwrap().clone();
    assert!(broken.is_empty(), "the reader saw broken files: {broken:?}");
    assert!(reads > 1000, "the reader read {reads} times");

    let mut contents = HashSet::new();
    for r in &reloads {
        let file = r
            .file
            .clone()
            .expect("the output file exists at reload time");
        let (seq, tag) = verify(&file).expect("a whole document at reload time");
        assert!(
            contents.insert(file.clone()),
            "document {seq}/{tag} was reloaded twice"
        );
        let parsed = hotconf::document::parse(&file, hotconf::crd::Format::Yaml).unwrap();
        assert_eq!(
            r.body["hash"],
            hotconf::document::hash(&parsed),
            "the POST names the file's hash"
        );
    }
    for (n, f) in finals.iter().enumerate() {
        assert!(contents.contains(f), "final state {n} was never reloaded");
    }
    let intermediates = reloads.len() - finals.len();
    assert!(
        intermediates <= doubles,
        "only intermediates of double swaps may add reloads"
    );
    let ok = metric(&admin, "hotconf_agent_reloads_total{result=\"success\"}")
        .await
        .unwrap();
    assert_eq!(ok as usize, reloads.len(), "one success per reload");
    let counted = metric(&admin, "hotconf_agent_reloads_total{result=\"refused\"}")
        .await
        .unwrap();
    assert_eq!(counted, refused);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), current);
    eprintln!(
        "1000 swaps in {elapsed:?}: {} reloads ({intermediates} intermediates of {doubles} double swaps, {close_doubles} of them within 10 ms), {noops} no-op swaps, {recreates} re-created mounts, {refused} refused, {reads} reads of the output",
        reloads.len()
    );
}

/// With `--configmap` and an API server that cannot be reached, the volume is the fallback:
/// its document is applied after the start-up grace period, and later swaps follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_is_the_fallback_when_the_api_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("out.yaml");
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let mut server = ReloadServer::start(Some(&output)).await;
    swap(&mount, &doc(1, "fallback"));
    let started = Instant::now();
    let _agent = spawn_agent(
        "volume-fallback",
        &[
            format!("--watch-dir={}", mount.display()),
            "--configmap=default/app-config".into(),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            "--admin-addr=off".into(),
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    server
        .until(&doc(1, "fallback"), Duration::from_secs(30))
        .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    swap(&mount, &doc(2, "fallback"));
    let got = server.until(&doc(2, "fallback"), STEP).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body["revision"],
        serde_json::Value::Null,
        "no revision without the API"
    );
}

/// A reload counts only on a 2xx answer: failed POSTs are retried with backoff; when every
/// attempt fails the file is still written and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_retried_until_the_app_answers_2xx_and_announced_again_later() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("out.yaml");
    let admin = free_addr();
    let mut server = ReloadServer::start(Some(&output)).await;
    server.fail_next.store(2, Ordering::SeqCst);
    swap(&mount, &doc(1, "retry"));
    let _agent = spawn_agent(
        "volume-retry",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            "--reload-retries=2".into(),
            format!("--admin-addr={admin}"),
        ],
        &[],
    );
    let got = server
        .until(&doc(1, "retry"), Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        server.attempts.load(Ordering::SeqCst),
        3,
        "two 503s, then 200"
    );

    // Down past the retries, twice: the document is written, and announced again later (after
    // 2 s, then 4 s more) until the application takes it.
    server.fail_next.store(6, Ordering::SeqCst);
    swap(&mount, &doc(2, "retry"));
    wait_reloads(
        &admin,
        "notify_failed",
        20,
        "the failed notification to be counted",
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(std::fs::read_to_string(&output).unwrap(), doc(2, "retry"));
    assert!(server.drain().is_empty());
    assert_eq!(
        metric(&admin, "hotconf_agent_reloads_total{result=\"success\"}").await,
        Some(1.0)
    );
    let got = server
        .until(&doc(2, "retry"), Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 1, "announced once it answers: {got:?}");
    assert_eq!(
        server.attempts.load(Ordering::SeqCst),
        3 + 6 + 1,
        "revision 1's three, two failed announcements of three attempts each, then 200"
    );
    // Counted once the agent has the answer (the app saw the POST first).
    wait_reloads(
        &admin,
        "success",
        10,
        "the second success to be counted",
        |n| n == 2.0,
    )
    .await;
}

/// A write that fails (a file stands where the output's directory was) is tried again later:
/// once the directory is back, the document is written and the app told, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_tried_again_until_it_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let app_dir = tmp.path().join("app");
    std::fs::create_dir(&app_dir).unwrap();
    let output = app_dir.join("out.yaml");
    let admin = free_addr();
    let mut server = ReloadServer::start(Some(&output)).await;
    swap(&mount, &doc(1, "rewrite"));
    let _agent = spawn_agent(
        "volume-rewrite",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            format!("--admin-addr={admin}"),
        ],
        &[],
    );
    server
        .until(&doc(1, "rewrite"), Duration::from_secs(30))
        .await;
    // The agent records what it announced beside the output, just after the app's answer:
    // the directory goes only once that is written.
    wait_for(10, "the agent's state beside the output", || async {
        hotconf::agent::state::read(&output).filter(|s| s.announced)
    })
    .await;
    std::fs::remove_dir_all(&app_dir).unwrap();
    std::fs::write(&app_dir, "not a directory").unwrap();
    swap(&mount, &doc(2, "rewrite"));
    wait_reloads(
        &admin,
        "write_failed",
        20,
        "the failed write to be counted",
        |n| n >= 1.0,
    )
    .await;
    assert!(server.drain().is_empty(), "nothing was announced");
    std::fs::remove_file(&app_dir).unwrap();
    std::fs::create_dir(&app_dir).unwrap();
    let got = server
        .until(&doc(2, "rewrite"), Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), doc(2, "rewrite"));
    // Counted once the agent has the answer (the app saw the POST first).
    wait_reloads(
        &admin,
        "success",
        10,
        "the second success to be counted",
        |n| n == 2.0,
    )
    .await;
}

/// `--signal HUP --pid-file F` and `--exec CMD` notify the application after each new document;
/// `--expand-env` expands `${VAR}` and `${VAR:default}` in string values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_exec_and_env_expansion() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("out.yaml");
    let hups = tmp.path().join("hups");
    let execs = tmp.path().join("execs");
    let pid_file = tmp.path().join("app.pid");
    // The "application": counts SIGHUPs. Killed when the test ends, even by a panic.
    struct App(std::process::Child);
    impl Drop for App {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut app = std::process::Command::new("bash");
    // A shell cannot trap a signal that was ignored when it started (as under `nohup`): give
    // it SIGHUP's default disposition, whatever this test process inherited.
    // SAFETY: only sigaction, which is async-signal-safe, runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        app.pre_exec(|| {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGHUP,
                nix::sys::signal::SigHandler::SigDfl,
            )
            .map(drop)
            .map_err(std::io::Error::from)
        });
    }
    let _app = App(app
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; echo $$ > {}; while :; do sleep 0.05; done",
            hups.display(),
            pid_file.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    wait_for(10, "the app's pid file", || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| !p.trim().is_empty())
    })
    .await;

    let text = |n: u64| {
        hotconf::document::render(
            &serde_json::json!({"values": {"n": n, "host": "${HOTCONF_TEST_DB_HOST}", "port": "${HOTCONF_TEST_PORT:5432}"}}),
            hotconf::crd::Format::Yaml,
        )
    };
    swap(&mount, &text(1));
    let _agent = spawn_agent(
        "volume-signal",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", output.display()),
            "--signal=HUP".into(),
            format!("--pid-file={}", pid_file.display()),
            format!("--exec=echo \"$HOTCONF_HASH\" >> {}", execs.display()),
            "--expand-env".into(),
            "--admin-addr=off".into(),
        ],
        &[("HOTCONF_TEST_DB_HOST", "db.internal")],
    );
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_for(20, "the first exec", || async {
        (lines(&execs).len() == 1).then_some(())
    })
    .await;
    // Two SIGHUPs pending at once would be delivered as one: let the first be handled.
    wait_for(30, "the first SIGHUP", || async {
        (lines(&hups).len() == 1).then_some(())
    })
    .await;
    swap(&mount, &text(2));
    wait_for(20, "the second exec", || async {
        (lines(&execs).len() == 2).then_some(())
    })
    .await;
    wait_for(30, "two SIGHUPs", || async {
        (lines(&hups).len() == 2).then_some(())
    })
    .await;

    let written: serde_json::Value = hotconf::document::parse(
        &std::fs::read_to_string(&output).unwrap(),
        hotconf::crd::Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        written,
        serde_json::json!({"values": {"n": 2, "host": "db.internal", "port": "5432"}})
    );
    // The hash handed on is the source document's, not the expanded one's.
    let source = hotconf::document::parse(&text(2), hotconf::crd::Format::Yaml).unwrap();
    assert_eq!(lines(&execs)[1], hotconf::document::hash(&source));
}

/// What the kubelet does with a ConfigMap: every data key into one new timestamped directory,
/// swapped in with `..data`.
fn mount_config_map(dir: &Path, cm: &ConfigMap) {
    let data = cm.data.clone().unwrap_or_default();
    let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    kubelet_write(dir, &stamp(), &pairs).unwrap();
}

/// The projected ConfigMap once it carries `revision`.
async fn projected(env: &TestEnv, name: &str, revision: i64) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(60, &format!("revision {revision} projected"), || async {
        api.get_opt(name).await.ok().flatten().filter(|cm| {
            cm.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::REVISION))
                == Some(&revision.to_string())
        })
    })
    .await
}

async fn applied(env: &TestEnv, pod: &str) -> Option<Applied> {
    let p = Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .get(pod)
        .await
        .ok()?;
    serde_json::from_str(p.metadata.annotations?.get(names::APPLIED)?).ok()
}

async fn consumers(env: &TestEnv, name: &str) -> Option<ConsumerStatus> {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .ok()?
        .status?
        .consumers
}

async fn set_level(env: &TestEnv, level: &str) {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "vol",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"values": {"level": level}}})),
        )
        .await
        .unwrap();
}

/// A volume-only agent (no `--configmap`, and a Role that cannot read ConfigMaps at all)
/// reports the revision and hash the operator projected, and the consumer selector counts it:
/// from a volume of an older operator (no metadata key: revision unknown) to the key
/// appearing (the revision is reported, the application not notified again), through new
/// revisions, a tampered document (refused: its hash does not match the metadata
/// key, the last good file stays, the failure is counted against that revision) and a
/// rollback (the metadata names the pinned revision with its own hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_only_agent_reports_what_it_applies_and_is_counted() {
    let env = TestEnv::new("agent-vol").await;
    let _operator = env.start_operator();
    env.apply_yaml(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: hotconf-agent}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: hotconf-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: hotconf-agent}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
---
apiVersion: v1
kind: Pod
metadata: {name: vol-0, labels: {app: vol}}
spec:
  containers:
  - {name: app, image: busybox}
---
apiVersion: hotconf.dev/v1alpha1
kind: RuntimeConfig
metadata: {name: vol}
spec:
  values: {level: one}
  rollout:
    consumerSelector: {app: vol}
"#,
    );
    let cm1 = projected(&env, "vol", 1).await;
    let meta1 = Meta::parse(&cm1.data.as_ref().unwrap()[META_KEY]).unwrap();
    let hash1 = cm1.metadata.annotations.as_ref().unwrap()[names::HASH].clone();
    assert_eq!((meta1.revision, meta1.hash.as_str()), (1, hash1.as_str()));
    assert_eq!(
        (meta1.kind.as_str(), meta1.name.as_str()),
        ("RuntimeConfig", "vol")
    );

    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("app/config.yaml");
    let execs = tmp.path().join("execs");
    let mut old = cm1.clone();
    old.data.as_mut().unwrap().remove(META_KEY);
    mount_config_map(&mount, &old);
    let kubeconfig = env.plane.kubeconfig_for("alice").unwrap();
    let _agent = spawn_agent(
        "volume-only-reports",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", output.display()),
            "--admin-addr=off".into(),
            format!("--exec=echo \"$HOTCONF_REVISION\" >> {}", execs.display()),
            "--pod-name=vol-0".into(),
            format!("--pod-namespace={}", env.ns),
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let on = |revision: i64| {
        let env = &env;
        async move {
            let a = eventually(
                30,
                &format!("the Pod to report revision {revision}"),
                || async {
                    applied(env, "vol-0")
                        .await
                        .filter(|a| a.revision == Some(revision) && a.error.is_none())
                },
            )
            .await;
            eventually(
                60,
                &format!("the consumer counted on revision {revision}"),
                || async {
                    consumers(env, "vol")
                        .await
                        .filter(|c| c.revision == revision && c.selected == 1 && c.updated == 1)
                },
            )
            .await;
            a
        }
    };
    let execs_run = || {
        std::fs::read_to_string(&execs)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let unknown = eventually(
        30,
        "the Pod to report the document of unknown revision",
        || async { applied(&env, "vol-0").await.filter(|a| a.hash.is_some()) },
    )
    .await;
    assert_eq!(
        (unknown.revision, unknown.hash.as_deref()),
        (None, Some(hash1.as_str()))
    );
    assert_eq!(execs_run(), [""], "handed on once, revision unknown");

    mount_config_map(&mount, &cm1);
    let a = on(1).await;
    assert_eq!(a.hash.as_deref(), Some(hash1.as_str()));
    assert_eq!(
        (a.kind.as_deref(), a.name.as_deref()),
        (Some("RuntimeConfig"), Some("vol"))
    );
    assert_eq!(execs_run(), [""], "the same content is not handed on again");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        cm1.data.as_ref().unwrap()["config.yaml"]
    );

    set_level(&env, "two").await;
    let cm2 = projected(&env, "vol", 2).await;
    mount_config_map(&mount, &cm2);
    let a = on(2).await;
    assert_eq!(
        a.hash.as_ref(),
        cm2.metadata.annotations.as_ref().unwrap().get(names::HASH)
    );
    assert_eq!(execs_run(), ["", "2"]);

    // Revision 3 reaches the node with its document changed there: refused, the file stays.
    set_level(&env, "three").await;
    let cm3 = projected(&env, "vol", 3).await;
    let good2 = std::fs::read(&output).unwrap();
    let mut tampered = cm3.clone();
    let data = tampered.data.as_mut().unwrap();
    let text = data["config.yaml"].replace("three", "tampered");
    data.insert("config.yaml".into(), text);
    mount_config_map(&mount, &tampered);
    let refused = eventually(30, "the Pod to report the refusal", || async {
        applied(&env, "vol-0").await.filter(|a| a.error.is_some())
    })
    .await;
    let error = refused.error.unwrap();
    assert!(
        error.contains("revision 3 refused: hash mismatch"),
        "{error}"
    );
    assert_eq!(
        (refused.revision, refused.failed_revision),
        (Some(2), Some(3))
    );
    assert_eq!(
        std::fs::read(&output).unwrap(),
        good2,
        "the last good file stays"
    );
    eventually(
        60,
        "the consumer counted as failed on revision 3",
        || async {
            consumers(&env, "vol")
                .await
                .filter(|c| c.revision == 3 && c.failed == 1 && c.updated == 0)
        },
    )
    .await;
    // The kubelet catches up with the real content.
    mount_config_map(&mount, &cm3);
    on(3).await;

    // A rollback to revision 1 projects revision 1's document and metadata.
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "vol",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {names::ROLLBACK_TO: "1"}}}),
            ),
        )
        .await
        .unwrap();
    let back = projected(&env, "vol", 1).await;
    assert_eq!(
        Meta::parse(&back.data.as_ref().unwrap()[META_KEY]).unwrap(),
        meta1,
        "revision 1 with revision 1's hash"
    );
    mount_config_map(&mount, &back);
    let a = on(1).await;
    assert_eq!(a.hash.as_deref(), Some(hash1.as_str()));
    assert_eq!(
        execs_run(),
        ["", "2", "3", "1"],
        "the tampered document never reached the app"
    );
}

/// A restarted agent whose source does not answer serves what its output holds from before:
/// ready at once, the revision in its metrics, the application not told again. And a document
/// it wrote but could not announce before it was killed is announced by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_without_a_source_serves_its_last_good_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    let output = tmp.path().join("out/config.yaml");
    let mut server = ReloadServer::start(Some(&output)).await;
    let url = server.url.clone();
    let args = |admin: &str, dir: &Path| {
        vec![
            format!("--watch-dir={}", dir.display()),
            format!("--output={}", output.display()),
            format!("--reload-url={url}"),
            "--reload-retries=0".into(),
            format!("--admin-addr={admin}"),
        ]
    };
    swap(&mount, &doc(1, "restart"));
    let admin = free_addr();
    let mut first = spawn_agent("restart-first", &args(&admin, &mount), &[]);
    server
        .until(&doc(1, "restart"), Duration::from_secs(30))
        .await;
    wait_reloads(&admin, "success", 10, "the first success", |n| n == 1.0).await;
    first.process.stop();

    // The mount is gone: the next agent has no source, yet is ready on what the app has.
    let gone = tmp.path().join("gone");
    let admin = free_addr();
    let second = spawn_agent("restart-second", &args(&admin, &gone), &[]);
    wait_for(20, "/readyz 200 on the persisted document", || async {
        agent_common::http_status(&admin, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(
        log.contains("the output holds the last good document"),
        "{log}"
    );
    assert!(
        server.drain().is_empty(),
        "the application is not told again"
    );
    drop(second);

    // Written, but the app was down, and the agent was killed before it could announce it.
    server.fail_next.store(1000, Ordering::SeqCst);
    swap(&mount, &doc(2, "restart"));
    let admin = free_addr();
    let mut third = spawn_agent("restart-third", &args(&admin, &mount), &[]);
    wait_reloads(
        &admin,
        "notify_failed",
        20,
        "the failed notification",
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(std::fs::read_to_string(&output).unwrap(), doc(2, "restart"));
    third.process.kill();
    server.fail_next.store(0, Ordering::SeqCst);
    let _fourth = spawn_agent("restart-fourth", &args(&free_addr(), &gone), &[]);
    let got = server
        .until(&doc(2, "restart"), Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 1, "announced by the next agent: {got:?}");
}

// The document of the OFREP test at revision `revision`: on/off, string, object and split flags.
fn flags_doc(classic: &str) -> serde_json::Value {
    serde_json::json!({
        "values": {},
        "featureFlags": {
            "new_ui": {"enabled": true, "rolloutPercentage": 100, "allow": ["vip"], "deny": ["mallory"]},
            "checkout_flow": {"variants": {"classic": classic, "streamlined": "v2"}, "defaultVariant": "classic",
                "fractional": {"classic": 50, "streamlined": 50}, "targets": {"streamlined": ["beta-1"]},
                "enabled": true, "bucketing": "flagd"},
            "pricing": {"variants": {"a": {"discount": 0}, "b": {"discount": 15}}, "defaultVariant": "a",
                "fractional": {}, "targets": {}, "enabled": false, "bucketing": "flagd"},
        },
        "maintenance": {"enabled": false, "reason": "", "until": null},
    })
}

// Projects `doc` as revision `revision` into a kubelet-style volume, with its metadata key.
fn project_flags(dir: &Path, doc: &serde_json::Value, revision: i64) {
    let meta = Meta {
        kind: "RuntimeConfig".into(),
        name: "shop".into(),
        revision,
        hash: hotconf::document::hash(doc),
        file_name: "config.yaml".into(),
        restart_keys: Vec::new(),
        feature_flags: None,
    };
    let text = hotconf::document::render(doc, hotconf::crd::Format::Yaml);
    kubelet_write(
        dir,
        &stamp(),
        &[("config.yaml", &text), (META_KEY, &meta.to_text())],
    )
    .unwrap();
}

// A real OpenFeature client (tests/fixtures/ofrep_client.py) asking the agent at `addr`.
fn openfeature(addr: &str, asks: serde_json::Value) -> Vec<serde_json::Value> {
    agent_common::run_python_json("ofrep_client.py", &[format!("http://{addr}")], &asks)
}

// POSTs `body` to `path` on `addr` (HTTP/1.0), with extra header lines; the status, headers and
// body.
async fn post(addr: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// The agent serves OFREP: a real OpenFeature client (the Python SDK's OFREP provider) reads
/// booleans, strings and objects with their variants and reasons, sees a new revision's value,
/// and gets the protocol's errors; bulk evaluation has an ETag and answers 304 to it; every
/// evaluation is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_openfeature_client_reads_flags_from_the_agent() {
    use hotconf::feature_flags::fractional;
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    project_flags(&mount, &flags_doc("v1"), 1);
    let (ofrep, admin) = (free_addr(), free_addr());
    let _agent = spawn_agent(
        "ofrep",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", tmp.path().join("out/config.yaml").display()),
            format!("--ofrep-addr={ofrep}"),
            format!("--admin-addr={admin}"),
        ],
        &[],
    );
    wait_for(20, "the first revision served", || async {
        // Nothing listens until the agent has started.
        tokio::net::TcpStream::connect(&ofrep).await.ok()?;
        let (code, _, body) = post(&ofrep, "/ofrep/v1/evaluate/flags/new_ui", "", "{}").await;
        (code == 200 && body.contains("\"revision\":1")).then_some(())
    })
    .await;
    let shopper = (0..50)
        .map(|i| format!("shopper-{i}"))
        .find(|s| {
            fractional("checkout_flow", s, &[("classic", 50), ("streamlined", 50)])
                == Some("streamlined")
        })
        .unwrap();
    let got = openfeature(
        &ofrep,
        json!([
            ["boolean", "new_ui", "vip", false],
            ["boolean", "new_ui", "mallory", true],
            ["boolean", "new_ui", "anyone", false],
            ["string", "checkout_flow", "beta-1", "none"],
            ["string", "checkout_flow", shopper, "none"],
            ["object", "pricing", "anyone", {}],
            ["string", "ghost", "anyone", "fallback"],
            ["string", "checkout_flow", null, "fallback"],
            ["boolean", "checkout_flow", "anyone", false],
        ]),
    );
    let expected = [
        json!([true, "on", "TARGETING_MATCH", null]),
        json!([false, "off", "TARGETING_MATCH", null]),
        json!([true, "on", "DEFAULT", null]),
        json!(["v2", "streamlined", "TARGETING_MATCH", null]),
        json!(["v2", "streamlined", "SPLIT", null]),
        json!([{"discount": 0}, "a", "DISABLED", null]),
        json!(["fallback", null, "ERROR", "FLAG_NOT_FOUND"]),
        json!(["fallback", null, "ERROR", "TARGETING_KEY_MISSING"]),
        json!([false, null, "ERROR", "TYPE_MISMATCH"]),
    ];
    assert_eq!(got.len(), expected.len());
    for (got, want) in got.iter().zip(expected) {
        assert_eq!(got, &want);
    }

    // A new revision: its value reaches the client.
    project_flags(&mount, &flags_doc("v1-bis"), 2);
    wait_for(20, "revision 2 served", || async {
        let got = openfeature(
            &ofrep,
            json!([["string", "checkout_flow", "nobody-targeted", "x"]]),
        );
        let r = resolve_expected("nobody-targeted");
        (got[0][0] == json!(r)).then_some(())
    })
    .await;

    // Bulk: every flag, an ETag, and 304 for it.
    let body = r#"{"context": {"targetingKey": "beta-1"}}"#;
    let (code, head, text) = post(&ofrep, "/ofrep/v1/evaluate/flags", "", body).await;
    assert_eq!(code, 200, "{text}");
    let bulk: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(bulk["flags"].as_array().unwrap().len(), 3);
    assert!(
        bulk["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["metadata"]["revision"] == 2)
    );
    let etag = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("etag:")
                .then(|| l[5..].trim().to_string())
        })
        .expect("an ETag");
    let (code, _, _) = post(
        &ofrep,
        "/ofrep/v1/evaluate/flags",
        &format!("If-None-Match: {etag}\r\n"),
        body,
    )
    .await;
    assert_eq!(code, 304);
    let (code, _, _) = post(
        &ofrep,
        "/ofrep/v1/evaluate/flags",
        &format!("If-None-Match: \"other\", W/{etag}\r\n"),
        body,
    )
    .await;
    assert_eq!(code, 304, "a weak tag in a list matches too");
    let other = r#"{"context": {"targetingKey": "someone-else"}}"#;
    let (code, _, _) = post(
        &ofrep,
        "/ofrep/v1/evaluate/flags",
        &format!("If-None-Match: {etag}\r\n"),
        other,
    )
    .await;
    assert_eq!(code, 200, "another subject, another answer");
    let (code, _, text) = post(&ofrep, "/ofrep/v1/evaluate/flags/new_ui", "", "not json").await;
    assert_eq!(code, 400);
    assert!(text.contains("PARSE_ERROR"), "{text}");

    let counted = metric(
        &admin,
        r#"hotconf_agent_flag_evaluations_total{flag="checkout_flow",variant="streamlined",reason="TARGETING_MATCH"}"#,
    )
    .await;
    assert!(counted.is_some_and(|n| n >= 2.0), "{counted:?}");
}

// What checkout_flow gives `subject` at revision 2: its split, classic now "v1-bis".
fn resolve_expected(subject: &str) -> &'static str {
    match hotconf::feature_flags::fractional(
        "checkout_flow",
        subject,
        &[("classic", 50), ("streamlined", 50)],
    ) {
        Some("classic") => "v1-bis",
        _ => "v2",
    }
}

/// The flags of the flagd test below: a split with a pinned subject, a three-way string split,
/// a switched-off object flag, a number flag with a target, and an on/off rollout bucketed as
/// flagd buckets it.
const FLAGD_SHOP: &str = r#"apiVersion: hotconf.dev/v1alpha1
kind: RuntimeConfig
metadata: {name: shop}
spec:
  values: {level: one}
  featureFlags:
    checkout_flow:
      enabled: true
      variants: {classic: "v1", streamlined: "v2"}
      defaultVariant: classic
      fractional: {classic: 50, streamlined: 50}
      targets: {streamlined: [beta-1]}
    banner:
      enabled: true
      variants: {none: "", sale: "20% off", ship: "free shipping"}
      defaultVariant: none
      fractional: {none: 80, sale: 10, ship: 10}
    pricing:
      enabled: false
      variants:
        current: {currency: EUR, discount: 0}
        promo: {currency: EUR, discount: 15}
      defaultVariant: current
      fractional: {current: 90, promo: 10}
    limit:
      enabled: true
      variants: {low: 10, high: 100}
      defaultVariant: low
      targets: {high: [vip]}
    new_ui:
      enabled: true
      rolloutPercentage: 30
      allow: [vip]
      deny: [mallory]
      bucketing: flagd
  target:
    flagdFileName: flags.flagd.json
"#;

// Every flag of FLAGD_SHOP for every subject, as [type, flag, subject, default].
fn flagd_asks(subjects: &[String]) -> serde_json::Value {
    let flags = [
        ("string", "checkout_flow", serde_json::json!("?")),
        ("string", "banner", serde_json::json!("?")),
        ("object", "pricing", serde_json::json!({})),
        ("integer", "limit", serde_json::json!(-1)),
        ("boolean", "new_ui", serde_json::json!(false)),
    ];
    subjects
        .iter()
        .flat_map(|s| {
            flags
                .iter()
                .map(move |(kind, flag, default)| serde_json::json!([kind, flag, s, default]))
        })
        .collect()
}

// Asks flagd's file provider (over the mounted `flags.flagd.json`) and the agent's OFREP
// endpoint the same questions; asserts the same value and variant, no error on either side,
// and reasons that correspond; flagd's answers.
fn flagd_and_ofrep_agree(
    mount: &Path,
    ofrep: &str,
    asks: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let file = mount.join("flags.flagd.json");
    let flagd: Vec<serde_json::Value> =
        agent_common::run_python_json("flagd_file_client.py", &[file.display().to_string()], asks);
    let ours = openfeature(ofrep, asks.clone());
    assert_eq!(
        (flagd.len(), ours.len()),
        (asks.as_array().unwrap().len(), flagd.len())
    );
    for ((ask, theirs), ours) in asks.as_array().unwrap().iter().zip(&flagd).zip(&ours) {
        assert_eq!(
            (&theirs[0], &theirs[1], &theirs[3]),
            (&ours[0], &ours[1], &ours[3]),
            "{ask}: flagd {theirs}, OFREP {ours}"
        );
        assert!(ours[3].is_null(), "{ask}: {ours}");
        // flagd has no SPLIT or DISABLED reason: a split is a targeting match, a switched-off
        // flag a static default.
        let flagd_reason = match ours[2].as_str().unwrap() {
            "SPLIT" => "TARGETING_MATCH",
            "DISABLED" => "STATIC",
            other => other,
        };
        assert_eq!(
            theirs[2], flagd_reason,
            "{ask}: flagd {theirs}, OFREP {ours}"
        );
    }
    flagd
}

/// The flagd-format projection (`target.flagdFileName`), as the operator writes it and the
/// kubelet mounts it, is read by flagd's own provider (openfeature-provider-flagd in FILE mode,
/// evaluating in process with openfeature-flagd-core) and evaluates exactly as the agent's OFREP
/// endpoint over the same volume, for every flag and subject tried; after a change to the CR
/// both give the new revision's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagds_file_provider_reads_the_projection_as_ofrep_answers() {
    let env = TestEnv::new("flagd-file").await;
    let _operator = env.start_operator();
    env.apply_yaml(FLAGD_SHOP);
    let cm1 = projected(&env, "shop", 1).await;
    let data = cm1.data.clone().unwrap();
    let definition: serde_json::Value = serde_json::from_str(&data["flags.flagd.json"]).unwrap();
    assert_eq!(
        definition["flags"].as_object().unwrap().len(),
        5,
        "{definition}"
    );
    assert!(data.contains_key("config.yaml"), "{:?}", data.keys());

    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("config");
    mount_config_map(&mount, &cm1);
    let ofrep = free_addr();
    let _agent = spawn_agent(
        "flagd-file",
        &[
            format!("--watch-dir={}", mount.display()),
            format!("--output={}", tmp.path().join("out/config.yaml").display()),
            format!("--ofrep-addr={ofrep}"),
            "--admin-addr=off".into(),
        ],
        &[],
    );
    let served = |revision: i64| {
        let ofrep = ofrep.clone();
        async move {
            wait_for(30, &format!("revision {revision} served"), || async {
                tokio::net::TcpStream::connect(&ofrep).await.ok()?;
                let (code, _, body) =
                    post(&ofrep, "/ofrep/v1/evaluate/flags/limit", "", "{}").await;
                (code == 200 && body.contains(&format!("\"revision\":{revision}"))).then_some(())
            })
            .await
        }
    };
    served(1).await;
    let mut subjects: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    subjects.extend(["beta-1", "vip", "mallory"].map(String::from));
    let asks = flagd_asks(&subjects);
    let before = flagd_and_ofrep_agree(&mount, &ofrep, &asks);
    // The spread reaches every variant of the splits, not one answer for all.
    let seen = |answers: &[serde_json::Value], flag: &str| -> HashSet<String> {
        asks.as_array()
            .unwrap()
            .iter()
            .zip(answers)
            .filter(|(ask, _)| ask[1] == flag)
            .map(|(_, a)| a[1].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(seen(&before, "checkout_flow").len(), 2);
    assert_eq!(seen(&before, "banner").len(), 3);
    assert_eq!(seen(&before, "new_ui").len(), 2);
    assert_eq!(
        seen(&before, "pricing"),
        HashSet::from(["current".to_string()])
    );

    // A change to the CR: the classic flow's value, the split and the switched-off flag.
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"featureFlags": {
                "checkout_flow": {"variants": {"classic": "v1-bis"},
                    "fractional": {"classic": 10, "streamlined": 90}},
                "pricing": {"enabled": true},
            }}})),
        )
        .await
        .unwrap();
    let cm2 = projected(&env, "shop", 2).await;
    mount_config_map(&mount, &cm2);
    served(2).await;
    let after = flagd_and_ofrep_agree(&mount, &ofrep, &asks);
    let values = |answers: &[serde_json::Value], flag: &str| -> HashSet<serde_json::Value> {
        asks.as_array()
            .unwrap()
            .iter()
            .zip(answers)
            .filter(|(ask, _)| ask[1] == flag)
            .map(|(_, a)| a[0].clone())
            .collect()
    };
    assert!(values(&after, "checkout_flow").contains(&serde_json::json!("v1-bis")));
    assert!(!values(&after, "checkout_flow").contains(&serde_json::json!("v1")));
    assert_eq!(seen(&after, "pricing").len(), 2, "the pricing split is on");
}
