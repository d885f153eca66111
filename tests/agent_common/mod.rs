//! Shared pieces of the agent and client tests: a reload endpoint that records what the agent
//! handed on, documents that betray a partial or mixed read, and helpers to run the real
//! `hotconf agent` binary under a supervisor.
#![allow(dead_code)]

// The same file as `common`'s: a test binary that loads both gets two copies, which is fine.
#[allow(clippy::duplicate_mod)]
#[path = "../common/http.rs"]
mod http;
pub use http::{http_get, sample};
pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hotconf::crd::Format;
use hotconf::dev::control_plane::Process;
use hotconf::document;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One reload POST the application received.
#[derive(Clone, Debug)]
pub struct Reload {
    /// The JSON body (revision, hash, file).
    pub body: Value,
    /// The output file's content at the moment of the POST.
    pub file: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

struct ServerState {
    output: Option<PathBuf>,
    tx: mpsc::UnboundedSender<Reload>,
    fail_next: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
}

/// A stand-in for the application's reload endpoint on 127.0.0.1.
pub struct ReloadServer {
    /// `http://127.0.0.1:PORT/-/reload`.
    pub url: String,
    /// Successful reloads, in order.
    pub rx: mpsc::UnboundedReceiver<Reload>,
    /// Answer this many next POSTs with 503.
    pub fail_next: Arc<AtomicU32>,
    /// Every POST, failed or not.
    pub attempts: Arc<AtomicU32>,
}

impl ReloadServer {
    /// Starts the server; each successful POST records the content of `output`.
    pub async fn start(output: Option<&Path>) -> ReloadServer {
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_next = Arc::new(AtomicU32::new(0));
        let attempts = Arc::new(AtomicU32::new(0));
        let state = Arc::new(ServerState {
            output: output.map(Path::to_path_buf),
            tx,
            fail_next: fail_next.clone(),
            attempts: attempts.clone(),
        });
        let app = Router::new()
            .route("/-/reload", post(reload))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ReloadServer {
            url: format!("http://{addr}/-/reload"),
            rx,
            fail_next,
            attempts,
        }
    }

    /// Waits for the next successful reload.
    pub async fn next(&mut self, within: Duration) -> Option<Reload> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Receives reloads until one carries `content`; returns all received (that one last).
    pub async fn until(&mut self, content: &str, within: Duration) -> Vec<Reload> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(r) => {
                    let done = r.file.as_deref() == Some(content);
                    got.push(r);
                    if done {
                        return got;
                    }
                }
                None => panic!(
                    "no reload with the expected content within {within:?}; got {} others: {:?}",
                    got.len(),
                    got.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Everything received so far without waiting.
    pub fn drain(&mut self) -> Vec<Reload> {
        let mut got = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            got.push(r);
        }
        got
    }
}

async fn reload(State(state): State<Arc<ServerState>>, body: String) -> StatusCode {
    state.attempts.fetch_add(1, Ordering::SeqCst);
    if state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let file = state
        .output
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let body = serde_json::from_str(&body).unwrap_or(Value::Null);
    let _ = state.tx.send(Reload {
        body,
        file,
        at: Instant::now(),
    });
    StatusCode::OK
}

/// A RuntimeConfig-shaped document whose payload is derived from `seq`, so that a partial or
/// mixed read cannot pass [`verify`].
pub fn doc_value(seq: u64, tag: &str) -> Value {
    let payload: String = (0..64).map(|i| format!("{seq}-{tag}-{i};")).collect();
    json!({
        "values": {"seq": seq, "tag": tag, "payload": payload, "check_interval": 30},
        "featureFlags": {"new_ui": {"enabled": true, "rolloutPercentage": 25, "allow": [], "deny": []}},
        "maintenance": {"enabled": false, "reason": "", "until": null},
    })
}

/// The YAML text of [`doc_value`], rendered as the operator renders it.
pub fn doc(seq: u64, tag: &str) -> String {
    document::render(&doc_value(seq, tag), Format::Yaml)
}

/// Parses a document made by [`doc`] and checks that it is whole; returns its seq and tag.
pub fn verify(text: &str) -> Result<(u64, String), String> {
    let v = document::parse(text, Format::Yaml).map_err(|e| format!("unparsable: {e}"))?;
    let seq = v["values"]["seq"]
        .as_u64()
        .ok_or_else(|| "no seq".to_string())?;
    let tag = v["values"]["tag"].as_str().unwrap_or_default().to_string();
    if v != doc_value(seq, &tag) {
        return Err(format!("document {seq}/{tag} is not whole"));
    }
    Ok((seq, tag))
}

/// A free port on 127.0.0.1, as `127.0.0.1:PORT`.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Reads one metric from the agent's admin server.
pub async fn metric(admin: &str, name: &str) -> Option<f64> {
    sample(&http_get(admin, "/metrics").await?, name)
}

/// GET `path` from `addr` (plain HTTP/1.0): the status code and the body, when something
/// answered.
pub async fn http_status(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Waits up to `secs` until the agent's `hotconf_agent_reloads_total{result}` satisfies `ok`.
pub async fn wait_reloads(
    admin: &str,
    result: &str,
    secs: u64,
    what: &str,
    ok: impl Fn(f64) -> bool,
) {
    let name = format!("hotconf_agent_reloads_total{{result=\"{result}\"}}");
    wait_for(secs, what, || async {
        let n = metric(admin, &name).await?;
        ok(n).then_some(())
    })
    .await
}

/// Polls `check` every 20 ms until it returns `Some` or `secs` pass.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where agent logs go: `target/agent-test-logs/<name>.log` (printed when a test fails).
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/agent-test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Runs `hotconf agent ARGS` under a supervisor with extra environment variables.
pub fn spawn_agent(name: &'static str, args: &[String], env: &[(&str, &str)]) -> Agent {
    let log = log_path(name);
    let mut full = vec!["agent".to_string()];
    full.extend(args.iter().cloned());
    let env: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
        .chain([("RUST_LOG", std::ffi::OsStr::new("info,hotconf=debug"))])
        .collect();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_hotconf"));
    let process = Process::spawn(name, &bin, &full, &env, &log).expect("starting the agent");
    Agent { process, log }
}

/// A running agent; its log is printed if the test fails.
pub struct Agent {
    pub process: Process,
    pub log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- agent log {} (last 60 lines) -----\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// The Python that has flagd's evaluator and the OpenFeature SDK's OFREP provider
/// (`$HOTCONF_FLAGD_PYTHON`, else the virtualenv `hack/test-deps.sh` makes).
pub fn flagd_python() -> PathBuf {
    if let Ok(p) = std::env::var("HOTCONF_FLAGD_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = PathBuf::from(home).join(".cache/hotconf/python/flagd-core-2.0.0/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `bash hack/test-deps.sh` (it installs openfeature-flagd-core 2.0.0 \
         and openfeature-provider-ofrep 0.3.0 from PyPI)",
        path.display()
    );
    path
}

/// Runs `tests/fixtures/<script>` with [`flagd_python`] and `args`, `input` as JSON on stdin;
/// its stdout, parsed.
pub fn run_python_json<T: serde::de::DeserializeOwned>(
    script: &str,
    args: &[String],
    input: &Value,
) -> T {
    use std::io::Write as _;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(script);
    let mut child = std::process::Command::new(flagd_python())
        .arg(&script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits up to `within` for `config` to hold `revision` (`what` says why it should).
pub async fn until_revision(
    config: &hotconf::client::Config,
    revision: i64,
    within: Duration,
    what: &str,
) {
    let mut changes = config.changes();
    tokio::time::timeout(
        within,
        changes.wait_for(|_| config.revision() == Some(revision)),
    )
    .await
    .unwrap_or_else(|_| panic!("revision {revision} within {within:?}: {what}"))
    .expect("the handle is open");
}
