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
//! The volume holds data keys only, not the ConfigMap's annotations, so the operator also
//! projects the revision and hash as the data key [`META_KEY`]. It is read from the same
//! timestamped directory as the document (one resolution of `..data` for both): a document
//! is never paired with the metadata of another version. A volume without that key (a
//! ConfigMap projected by an older operator, or not by hotconf) is read as before: revision
//! unknown, nothing to compare the hash with.
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

use super::health;
use super::source::{Origin, Owner, Snapshot, State, Unreadable, default_key};
use crate::projection::{META_KEY, Meta};

/// How long a burst of events may last before the directory is read anyway.
pub const MAX_DELAY: Duration = Duration::from_millis(50);
/// How often the directory is read even without events (a lost event, a queue overflow).
pub const RESYNC: Duration = Duration::from_secs(2);
/// How often a missing directory is looked for.
pub const RETRY: Duration = Duration::from_millis(20);
/// How long the volume source may go without a read (it reads at least every [`RESYNC`])
/// before it is reported stalled.
pub const STALE: Duration = Duration::from_secs(10);

/// What a read of the directory found.
// One lives per read of the directory, so the size of `Found` (the metadata with its flags)
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Read {
    /// The key's whole text (or why it cannot be had, e.g. the key is missing).
    Found {
        /// The data key read.
        key: String,
        /// Its text, or the problem (a metadata key that cannot be read is one too).
        text: Result<String, String>,
        /// The metadata key of the same version, when the volume has one.
        meta: Option<Meta>,
    },
    /// Nothing to read yet: the directory is missing, empty, or the kubelet is still creating
    /// it.
    NotReady,
}

/// What a read takes from the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick<'a> {
    /// One data key, the document (`None`: see [`default_key`]).
    Key(Option<&'a str>),
    /// Every data key but the metadata key, as one JSON object of key to text: the values of a
    /// mounted projected Secret (see [`super::secrets`]).
    Every,
}

/// Reads the data key `key` (default: see [`default_key`]) from a ConfigMap volume at `dir`.
/// With the kubelet's layout the read goes through one resolution of `..data`; a plain
/// directory of files is read directly.
pub fn read(dir: &Path, key: Option<&str>) -> std::io::Result<Read> {
    read_pick(dir, Pick::Key(key))
}

/// [`read`] with a choice of what to take.
pub fn read_pick(dir: &Path, pick: Pick<'_>) -> std::io::Result<Read> {
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
            .filter(|k| !k.starts_with("..") && *k != META_KEY)
            .collect();
        let key = match pick {
            Pick::Key(key) => key,
            Pick::Every => match read_every(&base, &keys)? {
                Some(read) => return Ok(read),
                // The directory went away under the read: the next one is read whole.
                None => continue,
            },
        };
        let Some(key) = key.map(str::to_string).or_else(|| {
            let described = read_meta(&base).ok().flatten().map(|m| m.file_name);
            default_key(keys.clone(), described.as_deref())
        }) else {
            return Ok(Read::Found {
                key: String::new(),
                text: Err(format!(
                    "no data key chosen: pass --file (keys: {})",
                    keys.join(", ")
                )),
                meta: None,
            });
        };
        match std::fs::read(base.join(&key)) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("data key {key} is not UTF-8 text"));
                // Read after the document, from the same directory: if that directory is gone
                // by now, the next one is read whole.
                let meta = match read_meta(&base) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Ok(Read::Found {
                            key,
                            text: Err(e.to_string()),
                            meta: None,
                        });
                    }
                };
                return Ok(Read::Found { key, text, meta });
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
                    meta: None,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Read::NotReady)
}

// Every key in `base` as one JSON object, with the metadata; `None` when `base` went away.
fn read_every(base: &Path, keys: &[&str]) -> std::io::Result<Option<Read>> {
    let mut values = std::collections::BTreeMap::new();
    let mut problem = None;
    for key in keys {
        match std::fs::read(base.join(key)) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    values.insert(*key, text);
                }
                Err(_) => problem = Some(format!("data key {key} is not UTF-8 text")),
            },
            Err(e) if e.kind() == ErrorKind::NotFound && !base.exists() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let meta = match read_meta(base) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            problem.get_or_insert(e.to_string());
            None
        }
    };
    let text = match problem {
        Some(p) => Err(p),
        None => Ok(serde_json::to_string(&values).expect("a map of strings serializes")),
    };
    Ok(Some(Read::Found {
        key: String::new(),
        text,
        meta,
    }))
}

/// The metadata key in `base` (`None`: there is none). `NotFound` means `base` itself is gone;
/// any other error says why the metadata cannot be trusted.
fn read_meta(base: &Path) -> std::io::Result<Option<Meta>> {
    match std::fs::read_to_string(base.join(META_KEY)) {
        Ok(text) => Meta::parse(&text).map(Some).map_err(|e| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!("the metadata key {META_KEY} does not parse: {e}"),
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound && base.exists() => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(e),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("reading the metadata key {META_KEY}: {e}"),
        )),
    }
}

/// The snapshot of what a read found. The metadata gives the owning CR, and, when it
/// describes the key read (its `fileName`), the revision and the hash the check stage compares
/// the document with, as the annotations do for the API source.
pub fn snapshot_of(key: String, text: Result<String, String>, meta: Option<Meta>) -> Snapshot {
    described_snapshot(key, text, meta, false)
}

// `every`: the snapshot holds every key (a Secret's values), which the metadata describes as a
// whole.
fn described_snapshot(
    key: String,
    text: Result<String, String>,
    meta: Option<Meta>,
    every: bool,
) -> Snapshot {
    let mut snapshot = Snapshot::new(Origin::Volume, key, text.map_err(Unreadable));
    if let Some(meta) = meta {
        if every || meta.file_name == snapshot.key {
            snapshot.revision = Some(meta.revision);
            snapshot.hash = Some(meta.hash);
            snapshot.restart_keys = meta.restart_keys;
            snapshot.flags = meta.feature_flags;
        }
        snapshot.owner = Owner {
            kind: Some(meta.kind),
            name: Some(meta.name),
        };
    }
    snapshot
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
    /// Read every data key as one JSON object instead of one key ([`Pick::Every`]): the
    /// directory is a mounted projected Secret.
    pub every_key: bool,
    /// How long the directory must be quiet before it is read.
    pub debounce: Duration,
    /// Where the source reports its health: up after each successful read of the directory,
    /// down while it is missing or unreadable (its bound should be [`STALE`]).
    pub health: health::Shared,
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
        let mut last: Option<State> = None;
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
                        self.set_health(|h| {
                            h.failed(format!("waiting for the volume directory: {e}"))
                        });
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

    // Records a read (or why there was none); the source is alive either way.
    fn set_health(&self, f: impl FnOnce(&mut health::SourceHealth)) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.heard(Instant::now().into_std());
        f(&mut h);
    }

    fn publish(
        &self,
        tx: &watch::Sender<Option<Snapshot>>,
        last: &mut Option<State>,
        seen_at: std::time::Instant,
    ) {
        let pick = match self.every_key {
            true => Pick::Every,
            false => Pick::Key(self.key.as_deref()),
        };
        let (key, text, meta) = match read_pick(&self.dir, pick) {
            Ok(Read::Found { key, text, meta }) => {
                self.set_health(|h| h.listed(Instant::now().into_std()));
                (key, text, meta)
            }
            Ok(Read::NotReady) => {
                self.set_health(|h| {
                    h.failed("the volume has no data (not mounted, or being written)")
                });
                return;
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "reading the volume");
                self.set_health(|h| h.failed(format!("reading the volume: {e}")));
                return;
            }
        };
        let mut snapshot = described_snapshot(key, text, meta, self.every_key);
        // Unchanged content under a new revision is published too: it is reported.
        if last.as_ref() == Some(&snapshot.state()) {
            return;
        }
        snapshot.seen_at = seen_at;
        *last = Some(snapshot.state());
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

/// [`kubelet_write`] of a data map (a ConfigMap's data, a Secret's data as text).
pub fn kubelet_write_data(
    dir: &Path,
    stamp: &str,
    data: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    kubelet_write(dir, stamp, &pairs)
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
            meta: None,
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

    fn meta(revision: i64, hash: &str, file_name: &str) -> Meta {
        Meta {
            kind: "RuntimeConfig".into(),
            name: "lazy".into(),
            revision,
            hash: hash.into(),
            file_name: file_name.into(),
            restart_keys: Vec::new(),
            feature_flags: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let tmp = std::env::temp_dir().join(format!("hotconf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        tmp
    }

    #[test]
    fn the_metadata_key_gives_the_volume_snapshot_its_revision_and_hash() {
        let tmp = scratch("meta");
        let m = meta(3, "abc", "app.json").to_text();
        kubelet_write(&tmp, "1", &[("app.json", "{}"), (META_KEY, &m)]).unwrap();
        // The metadata key is not a candidate for the default key: app.json is the only key.
        let Read::Found { key, text, meta: m } = read(&tmp, None).unwrap() else {
            panic!("found")
        };
        assert_eq!((key.as_str(), text.as_deref()), ("app.json", Ok("{}")));
        assert_eq!(m, Some(meta(3, "abc", "app.json")));
        let snapshot = snapshot_of(key, text, m);
        assert_eq!(snapshot.revision, Some(3));
        assert_eq!(snapshot.hash.as_deref(), Some("abc"));
        assert_eq!(snapshot.owner.kind.as_deref(), Some("RuntimeConfig"));
        assert_eq!(snapshot.owner.name.as_deref(), Some("lazy"));
        assert_eq!(snapshot.origin, Origin::Volume);

        // Metadata about another key names the CR but vouches for nothing else.
        let other = snapshot_of(
            "values.a".into(),
            Ok("1".into()),
            Some(meta(3, "abc", "app.json")),
        );
        assert_eq!((other.revision, other.hash), (None, None));
        assert_eq!(other.owner.name.as_deref(), Some("lazy"));

        // Unreadable metadata is a reason to refuse, not to guess.
        kubelet_write(
            &tmp,
            "2",
            &[("app.json", "{}"), (META_KEY, "{\"revision\":")],
        )
        .unwrap();
        let Read::Found { text, meta, .. } = read(&tmp, None).unwrap() else {
            panic!("found")
        };
        assert!(
            text.unwrap_err()
                .contains("metadata key .hotconf.json does not parse")
        );
        assert_eq!(meta, None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_volume_without_the_metadata_key_reads_as_before() {
        let tmp = scratch("nometa");
        kubelet_write(&tmp, "1", &[("config.yaml", "a: 1\n")]).unwrap();
        assert_eq!(read(&tmp, None).unwrap(), found("config.yaml", "a: 1\n"));
        let snapshot = snapshot_of("config.yaml".into(), Ok("a: 1\n".into()), None);
        assert_eq!((snapshot.revision, snapshot.hash), (None, None));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn document_and_metadata_come_from_the_same_version() {
        use std::os::unix::fs::symlink;
        let tmp = scratch("mixed");
        let m1 = meta(1, "h1", "config.yaml").to_text();
        let m2 = meta(2, "h2", "config.yaml").to_text();
        kubelet_write(&tmp, "1", &[("config.yaml", "a: 1\n"), (META_KEY, &m1)]).unwrap();
        kubelet_write(&tmp, "2", &[("config.yaml", "a: 2\n"), (META_KEY, &m2)]).unwrap();
        let Read::Found { text, meta: m, .. } = read(&tmp, None).unwrap() else {
            panic!("found")
        };
        assert_eq!(
            (text.as_deref(), m),
            (Ok("a: 2\n"), Some(meta(2, "h2", "config.yaml")))
        );

        // A volume caught between versions: `..data` already points at version 3 while the
        // old directory is still there and the per-key link of the document still leads into
        // it. Both keys are read through `..data`: version 3's document with version 3's
        // metadata, never one version's document with the other's metadata.
        let m3 = meta(3, "h3", "config.yaml").to_text();
        std::fs::create_dir(tmp.join("..3")).unwrap();
        std::fs::write(tmp.join("..3/config.yaml"), "a: 3\n").unwrap();
        std::fs::write(tmp.join("..3").join(META_KEY), &m3).unwrap();
        std::fs::remove_file(tmp.join("config.yaml")).unwrap();
        symlink("..2/config.yaml", tmp.join("config.yaml")).unwrap();
        symlink("..3", tmp.join("..data_tmp")).unwrap();
        std::fs::rename(tmp.join("..data_tmp"), tmp.join("..data")).unwrap();
        let Read::Found { text, meta: m, .. } = read(&tmp, None).unwrap() else {
            panic!("found")
        };
        assert_eq!(
            (text.as_deref(), m),
            (Ok("a: 3\n"), Some(meta(3, "h3", "config.yaml")))
        );
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
