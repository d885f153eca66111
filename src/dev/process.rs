//! Processes under a supervisor: each control-plane process (and anything a test starts) runs
//! under a small shell that holds a pipe from this process on its stdin. When this process exits
//! for any reason (a normal exit, a panic, even SIGKILL) the pipe closes and the supervisor stops
//! its child, so no process outlives its owner. A last supervisor (the reaper) removes a
//! temporary directory once the others are gone.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
};

use super::control_plane::io;
use super::error::Error;

pub(super) struct Supervised {
    pub(super) name: &'static str,
    pub(super) child: Child,
    // Closing this pipe tells the supervisor to stop its process.
    pub(super) stdin: Option<ChildStdin>,
}

// Starts BIN ARGS under bash; stops it with SIGTERM (then SIGKILL) once stdin reaches EOF.
pub(super) const SUPERVISOR: &str = r#"
"$@" </dev/null &
child=$!
while IFS= read -r _; do :; done
kill -TERM "$child" 2>/dev/null
for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL "$child" 2>/dev/null
"#;

// Waits for stdin EOF, then for the supervisors listed in $dir/.supervisors to exit, then
// removes the directory.
pub(super) const REAPER: &str = r#"
dir=$1
while IFS= read -r _; do :; done
for _ in $(seq 150); do
  alive=
  for p in $(cat "$dir/.supervisors" 2>/dev/null); do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
done
rm -rf "$dir"
"#;

/// A process under a supervisor: it stops (SIGTERM, then SIGKILL) when [`Process::stop`] is
/// called, when it is dropped, or when this process exits in any way.
pub struct Process {
    pub(super) inner: Supervised,
    log: PathBuf,
    // How it was started, so that it can be started again ([`Process::respawn`]).
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, std::ffi::OsString)>,
}

impl Process {
    /// Starts `program args` with extra environment variables, output appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log: &Path,
    ) -> Result<Process, Error> {
        let out = io(
            format!("opening {}", log.display()),
            fs::OpenOptions::new().create(true).append(true).open(log),
        )?;
        let err = io("duplicating the log handle", out.try_clone())?;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(name)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            command.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = io(format!("starting {name}"), command.spawn())?;
        let stdin = child.stdin.take();
        Ok(Process {
            inner: Supervised { name, child, stdin },
            log: log.to_path_buf(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
        })
    }

    /// Starts the same program again, with the same arguments, environment and log (appended),
    /// as a new process. The caller stops or kills this one first.
    pub fn respawn(&self) -> Result<Process, Error> {
        let env: Vec<(&str, &std::ffi::OsStr)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_os_str()))
            .collect();
        Process::spawn(self.inner.name, &self.program, &self.args, &env, &self.log)
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Sends SIGTERM to the program (not its supervisor) and returns at once.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }

    /// The process id of the program (not of its supervisor), once it has started.
    pub fn pid(&self) -> Option<u32> {
        child_pids(self.inner.child.id()).first().copied()
    }

    /// The name it was started under (`crd-server`, `kube-apiserver`, ...).
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends SIGTERM and waits until it has exited (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        drop(self.inner.stdin.take());
        let _ = self.inner.child.wait();
    }

    /// Sends SIGKILL to the program and waits for its supervisor.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        self.stop();
    }

    /// Whether the program still runs.
    pub fn running(&self) -> bool {
        !child_pids(self.inner.child.id()).is_empty()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn child_pids(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
