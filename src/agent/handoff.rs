//! Handing a checked document to the application: an atomic write of the output file, then the
//! notifications the application asked for — an HTTP POST to a reload URL (retried with
//! exponential backoff; only a 2xx answer counts), a signal to a process (by pid file or by
//! name), or a shell command.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The first wait before a failed reload POST is retried; it doubles each time.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename
/// over `path`, fsync of the directory. A reader sees the old file or the new one, whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the file's mode (0600 for a file that holds sensitive values).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the output path has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.hotconf-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// A signal name or number that names no signal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownSignal(String);

/// A notification that failed (every one that did, named).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(String);

/// Parses a signal name: `HUP`, `SIGHUP`, `hup` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, UnknownSignal> {
    signal_named(text).map_err(UnknownSignal)
}

fn signal_named(text: &str) -> Result<Signal, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|e| format!("signal {t}: {e}"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| format!("unknown signal {t}"))
}

/// How to find the process to signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The pid written in this file.
    PidFile(PathBuf),
    /// Every process with this name (`/proc/PID/comm`; needs `shareProcessNamespace: true` in
    /// a Pod).
    Name(String),
}

/// What was handed on, for the notifications.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Handed {
    /// The revision, when known.
    pub revision: Option<i64>,
    /// The document's hash.
    pub hash: String,
    /// The output file, when there is one.
    pub file: Option<PathBuf>,
}

/// The notifications to send after each hand-off.
#[derive(Clone, Debug)]
pub struct Notifier {
    reload_url: Option<http::Uri>,
    retries: u32,
    timeout: Duration,
    signal: Option<(Signal, Target)>,
    exec: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Notifier {
    /// A notifier. `reload_url` must be an `http://` URL (the application is on localhost).
    pub fn new(
        reload_url: Option<&str>,
        retries: u32,
        timeout: Duration,
        signal: Option<(Signal, Target)>,
        exec: Option<String>,
    ) -> Result<Self, String> {
        let reload_url = reload_url
            .map(|u| {
                let uri: http::Uri = u.parse().map_err(|e| format!("--reload-url {u}: {e}"))?;
                if uri.scheme_str() != Some("http") {
                    return Err(format!(
                        "--reload-url {u}: only http:// is supported (the application listens on localhost)"
                    ));
                }
                Ok(uri)
            })
            .transpose()?;
        Ok(Notifier {
            reload_url,
            retries,
            timeout,
            signal,
            exec,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Whether any notification is configured.
    pub fn is_empty(&self) -> bool {
        self.reload_url.is_none() && self.signal.is_none() && self.exec.is_none()
    }

    /// Sends every configured notification; the error names each one that failed.
    pub async fn notify(&self, handed: &Handed) -> Result<(), NotifyError> {
        let mut failures = Vec::new();
        if let Some(url) = &self.reload_url
            && let Err(e) = self.post(url, handed).await
        {
            failures.push(e);
        }
        if let Some((signal, target)) = &self.signal
            && let Err(e) = send_signal(*signal, target)
        {
            failures.push(e);
        }
        if let Some(command) = &self.exec
            && let Err(e) = run_command(command, handed).await
        {
            failures.push(e);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(NotifyError(failures.join("; ")))
        }
    }

    async fn post(&self, url: &http::Uri, handed: &Handed) -> Result<(), String> {
        let body = Bytes::from(serde_json::to_vec(handed).expect("serializable"));
        let mut wait = FIRST_RETRY;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
            let request = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "hotconf-agent")
                .body(Full::new(body.clone()))
                .expect("a valid request");
            match tokio::time::timeout(self.timeout, self.http.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {
                    // Read the body so the connection can be reused.
                    let _ = response.into_body().collect().await;
                    return Ok(());
                }
                Ok(Ok(response)) => {
                    last = format!("POST {url}: HTTP {}", response.status());
                }
                Ok(Err(e)) => last = format!("POST {url}: {e}"),
                Err(_) => last = format!("POST {url}: no answer within {:?}", self.timeout),
            }
            tracing::debug!(attempt, error = %last, "reload POST failed");
        }
        Err(format!("{last} (after {} attempts)", self.retries + 1))
    }
}

fn send_signal(signal: Signal, target: &Target) -> Result<(), String> {
    let pids = match target {
        Target::PidFile(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("reading pid file {}: {e}", file.display()))?;
            let pid: i32 = text
                .trim()
                .parse()
                .map_err(|_| format!("pid file {} holds no pid", file.display()))?;
            vec![pid]
        }
        Target::Name(name) => {
            let pids = pids_named(name);
            if pids.is_empty() {
                return Err(format!("no process named {name}"));
            }
            pids
        }
    };
    for pid in pids {
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("kill -{signal} {pid}: {e}"))?;
    }
    Ok(())
}

fn pids_named(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

async fn run_command(command: &str, handed: &Handed) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("HOTCONF_HASH", &handed.hash)
        .env(
            "HOTCONF_REVISION",
            handed.revision.map(|r| r.to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(file) = &handed.file {
        cmd.env("HOTCONF_OUTPUT", file);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("running {command}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{command}: {} {}",
            out.status,
            stderr.trim().chars().take(200).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("sigusr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("hotconf-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        write_atomic(&path, b"a: 1\n").unwrap();
        write_atomic(&path, b"a: 2\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a: 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_url_must_be_http() {
        let t = Duration::from_secs(1);
        assert!(Notifier::new(Some("https://x/"), 0, t, None, None).is_err());
        assert!(Notifier::new(Some("http://127.0.0.1:1/-/reload"), 0, t, None, None).is_ok());
    }

    #[tokio::test]
    async fn exec_gets_the_revision_and_reports_failure() {
        let dir = std::env::temp_dir().join(format!("hotconf-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let handed = Handed {
            revision: Some(7),
            hash: "abc".into(),
            file: None,
        };
        run_command(
            &format!("echo $HOTCONF_REVISION $HOTCONF_HASH > {}", out.display()),
            &handed,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "7 abc\n");
        assert!(run_command("exit 3", &handed).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
