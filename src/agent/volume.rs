//! The volume source: a directory where the kubelet mounts a ConfigMap, watched with inotify.
//!
//! The kubelet never edits a file in place. It writes the new content into a fresh
//! `..<timestamp>` directory, points a `..data_tmp` symlink at it, renames `..data_tmp` over
//! `..data` (an atomic swap) and removes the old directory; each key is a symlink
//! `KEY -> ..data/KEY`. So the directory itself is watched (not recursively: the events that
//! matter are creates, renames and removals in it), and a change is read by resolving `..data`
//! once and reading the key inside that timestamped directory, which never changes once it is
//! in place: a read sees one whole version, never a mix.
//!
//! A burst of events (one swap makes about five) is debounced briefly, content that did not
//! change is not reported, and when the directory itself is removed or replaced the watch is
//! set up again on the new one.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use super::source::{Origin, Snapshot, Unreadable, default_key};

/// How long a burst of events may last before the directory is read anyway.
pub const MAX_DELAY: Duration = Duration::from_millis(50);
/// How often the directory is read even without events (a lost event, a queue overflow).
pub const RESYNC: Duration = Duration::from_secs(2);
/// How often a missing directory is looked for.
pub const RETRY: Duration = Duration::from_millis(20);

/// What a read of the directory found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The key's whole text (or why it cannot be had, e.g. the key is missing).
    Found {
        /// The data key read.
        key: String,
        /// Its text, or the problem.
        text: Result<String, String>,
    },
    /// Nothing to read yet: the directory is missing, empty, or the kubelet is still creating
    /// it.
    NotReady,
}

/// Reads the data key `key` (default: see [`default_key`]) from a ConfigMap volume at `dir`.
/// With the kubelet's layout the read goes through one resolution of `..data`; a plain
/// directory of files is read directly.
pub fn read(dir: &Path, key: Option<&str>) -> std::io::Result<Read> {
    // A swap between resolving `..data` and reading may remove the old directory: try again.
    for _ in 0..16 {
        let base = match std::fs::read_link(dir.join("..data")) {
            Ok(target) => dir.join(target),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let entries = match list(dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Read::NotReady),
                    Err(e) => return Err(e),
                };
                // `..<timestamp>` without `..data`: the kubelet is still writing.
                if entries.is_empty() || entries.iter().any(|e| e.starts_with("..")) {
                    return Ok(Read::NotReady);
                }
                dir.to_path_buf()
            }
            // `..data` is not a symlink: a copy of the layout, read through it.
            Err(e) if e.kind() == ErrorKind::InvalidInput => dir.join("..data"),
            Err(e) => return Err(e),
        };
        let keys = match list(&base) {
            Ok(keys) => keys,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let keys: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| !k.starts_with(".."))
            .collect();
        let Some(key) = key
            .map(str::to_string)
            .or_else(|| default_key(keys.clone()))
        else {
            return Ok(Read::Found {
                key: String::new(),
                text: Err(format!(
                    "no data key chosen: pass --file (keys: {})",
                    keys.join(", ")
                )),
            });
        };
        match std::fs::read(base.join(&key)) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("data key {key} is not UTF-8 text"));
                return Ok(Read::Found { key, text });
            }
            Err(e) if e.kind() == ErrorKind::NotFound && !base.exists() => continue,
            // `KEY -> ..data/KEY` while `..data` is gone: the mount is being removed (or set
            // up), not a document without the key.
            Err(e) if e.kind() == ErrorKind::NotFound && into_data(&base.join(&key)) => {
                return Ok(Read::NotReady);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Read::Found {
                    text: Err(format!(
                        "the volume has no data key {key} (keys: {})",
                        keys.join(", ")
                    )),
                    key,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Read::NotReady)
}

/// Whether `path` is a symlink into `..data`, the kubelet's per-key link.
fn into_data(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|target| target.starts_with("..data"))
}

fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Keys are files (or symlinks to them); subdirectories are items with paths.
        if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with("..") {
            continue;
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Watches a ConfigMap volume and publishes each new version of the data key.
#[derive(Clone, Debug)]
pub struct VolumeSource {
    /// The mounted directory.
    pub dir: PathBuf,
    /// The data key; `None`: the only key, else `config.yaml` (see [`default_key`]).
    pub key: Option<String>,
    /// How long the directory must be quiet before it is read.
    pub debounce: Duration,
}

type Events = mpsc::UnboundedReceiver<notify::Result<notify::Event>>;

struct Watch {
    // Dropping the watcher removes the inotify watch.
    _watcher: RecommendedWatcher,
    identity: (u64, u64),
}

impl VolumeSource {
    /// Runs until every receiver of `tx` is gone, publishing each version whose content
    /// differs from the one published before.
    pub async fn run(self, tx: watch::Sender<Option<Snapshot>>) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut current: Option<Watch> = None;
        let mut last: Option<String> = None;
        let mut waiting_logged = false;
        loop {
            if current.is_none() {
                match self.establish(events_tx.clone()) {
                    Ok(w) => {
                        tracing::debug!(dir = %self.dir.display(), "watching the volume");
                        current = Some(w);
                        waiting_logged = false;
                        // Whatever changed before the watch was in place is read now.
                        self.publish(&tx, &mut last, Instant::now().into_std());
                    }
                    Err(e) => {
                        if !waiting_logged {
                            tracing::info!(dir = %self.dir.display(), error = %e, "waiting for the volume directory");
                            waiting_logged = true;
                        }
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = sleep(RETRY) => continue,
                        }
                    }
                }
            }
            let first = tokio::select! {
                _ = tx.closed() => return,
                event = events.recv() => event,
                _ = sleep(RESYNC) => None,
            };
            let burst = Instant::now();
            let mut lost = self.lost(&first);
            if first.is_some() {
                lost |= self.debounce(&mut events, burst).await;
            }
            let replaced = current
                .as_ref()
                .is_none_or(|w| dir_identity(&self.dir).ok() != Some(w.identity));
            if lost || replaced {
                tracing::info!(dir = %self.dir.display(), "the volume directory was removed or replaced; watching it again");
                current = None;
                continue;
            }
            self.publish(&tx, &mut last, burst.into_std());
        }
    }

    // Waits until no event came for `debounce` (at most MAX_DELAY after the burst started).
    // Returns whether an event said the directory itself went away.
    async fn debounce(&self, events: &mut Events, burst: Instant) -> bool {
        let hard = burst + MAX_DELAY;
        let mut lost = false;
        loop {
            let quiet = (Instant::now() + self.debounce).min(hard);
            tokio::select! {
                event = events.recv() => match event {
                    Some(e) => lost |= self.lost(&Some(e)),
                    None => return lost,
                },
                _ = sleep_until(quiet) => return lost,
            }
        }
    }

    fn lost(&self, event: &Option<notify::Result<notify::Event>>) -> bool {
        match event {
            Some(Ok(e)) => {
                matches!(
                    e.kind,
                    EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) && e.paths.iter().any(|p| p == &self.dir)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "inotify error; watching the volume again");
                true
            }
            None => false,
        }
    }

    fn establish(
        &self,
        events: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    ) -> notify::Result<Watch> {
        let before = dir_identity(&self.dir).map_err(notify::Error::io)?;
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        // Replaced between the stat and the watch: try again.
        if dir_identity(&self.dir).map_err(notify::Error::io)? != before {
            return Err(notify::Error::generic("the directory was replaced"));
        }
        Ok(Watch {
            _watcher: watcher,
            identity: before,
        })
    }

    fn publish(
        &self,
        tx: &watch::Sender<Option<Snapshot>>,
        last: &mut Option<String>,
        seen_at: std::time::Instant,
    ) {
        let (key, text) = match read(&self.dir, self.key.as_deref()) {
            Ok(Read::Found { key, text }) => (key, text),
            Ok(Read::NotReady) => return,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "reading the volume");
                return;
            }
        };
        let mut snapshot = Snapshot::new(Origin::Volume, key, text.map_err(Unreadable));
        if last.as_deref() == Some(snapshot.identity.as_str()) {
            return;
        }
        snapshot.seen_at = seen_at;
        *last = Some(snapshot.identity.clone());
        tx.send_replace(Some(snapshot));
    }
}

fn dir_identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    Ok((meta.dev(), meta.ino()))
}

/// Writes a kubelet-style ConfigMap volume: a new `..<stamp>` directory with every key, a
/// `..data_tmp` symlink renamed over `..data`, a `KEY -> ..data/KEY` symlink per key, and the
/// previous timestamped directory removed. For tests, benchmarks and local experiments.
pub fn kubelet_write(dir: &Path, stamp: &str, data: &[(&str, &str)]) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(dir)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    let ts = format!("..{stamp}");
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir)?;
    for (key, value) in data {
        std::fs::write(ts_dir.join(key), value)?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for (key, _) in data {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link)?;
        }
    }
    if let Some(old) = old
        && old != Path::new(&ts)
    {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(key: &str, text: &str) -> Read {
        Read::Found {
            key: key.into(),
            text: Ok(text.into()),
        }
    }

    #[test]
    fn reads_through_the_data_symlink() {
        let tmp = std::env::temp_dir().join(format!("hotconf-vol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(read(&tmp, None).unwrap(), Read::NotReady);
        kubelet_write(&tmp, "1", &[("config.yaml", "a: 1\n"), ("values.a", "1")]).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), found("config.yaml", "a: 1\n"));
        assert_eq!(
            read(&tmp, Some("values.a")).unwrap(),
            found("values.a", "1")
        );
        kubelet_write(&tmp, "2", &[("config.yaml", "a: 2\n"), ("values.a", "2")]).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), found("config.yaml", "a: 2\n"));
        assert!(!tmp.join("..1").exists(), "the old directory is gone");
        let Read::Found { text, .. } = read(&tmp, Some("nope")).unwrap() else {
            panic!("found")
        };
        assert!(text.unwrap_err().contains("no data key nope"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_plain_directory_and_a_half_written_one() {
        let tmp = std::env::temp_dir().join(format!("hotconf-plain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), Read::NotReady, "empty");
        std::fs::create_dir(tmp.join("..2026")).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), Read::NotReady, "being written");
        std::fs::remove_dir(tmp.join("..2026")).unwrap();
        // Half removed: the key's link is left, `..data` is already gone.
        std::os::unix::fs::symlink("..data/config.yaml", tmp.join("config.yaml")).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), Read::NotReady, "being removed");
        std::fs::remove_file(tmp.join("config.yaml")).unwrap();
        std::fs::write(tmp.join("app.json"), "{}").unwrap();
        assert_eq!(read(&tmp, None).unwrap(), found("app.json", "{}"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
