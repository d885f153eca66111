//! A simulated pod's volumes: `configMap` and `secret` volumes laid out exactly as the kubelet's
//! atomic writer lays them out (a timestamped directory `..2026_12_02_05_55_00.123456789`, the
//! `..data` symlink to it swapped by renaming `..data_tmp` over it, and a `KEY -> ..data/KEY`
//! symlink per top-level path), every other volume a plain directory the pod's containers
//! share. The layout writer and the projection (`items`, `optional`) are pure of the API.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret, Volume};

/// What a volume is filled from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A ConfigMap in the pod's namespace.
    ConfigMap(String),
    /// A Secret in the pod's namespace.
    Secret(String),
}

/// A volume as the simulator keeps it.
#[derive(Clone, Debug)]
pub struct SimVolume {
    /// The volume's name in the pod spec.
    pub name: String,
    /// Its directory on this machine.
    pub dir: PathBuf,
    /// Where its content comes from; `None` for a plain directory (emptyDir and the rest).
    pub source: Option<Source>,
    /// The volume's `items`.
    pub items: Option<Vec<KeyToPath>>,
    /// The volume's `optional`.
    pub optional: bool,
}

impl SimVolume {
    /// The simulator's view of a pod's volume, kept under `root`.
    pub fn new(volume: &Volume, root: &Path) -> SimVolume {
        let (source, items, optional) = if let Some(cm) = &volume.config_map {
            (
                Some(Source::ConfigMap(cm.name.clone())),
                cm.items.clone(),
                cm.optional.unwrap_or(false),
            )
        } else if let Some(s) = &volume.secret {
            (
                s.secret_name.clone().map(Source::Secret),
                s.items.clone(),
                s.optional.unwrap_or(false),
            )
        } else {
            (None, None, false)
        };
        SimVolume {
            name: volume.name.clone(),
            dir: root.join(&volume.name),
            source,
            items,
            optional,
        }
    }
}

/// The data of a ConfigMap (`data` and `binaryData`) as bytes per key.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// The data of a Secret as bytes per key.
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Why a volume cannot be set up (the kubelet keeps such a pod in `ContainerCreating`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The ConfigMap or Secret does not exist and the volume is not optional.
    #[error("{0:?} not found")]
    NotFound(Source),
    /// An `items` key is not in the object and the volume is not optional.
    #[error("{object:?} has no key {key}")]
    MissingKey {
        /// The object.
        object: Source,
        /// The key.
        key: String,
    },
}

/// The files of a volume (relative path → content) from its source's data (`None`: the object
/// does not exist), honouring `items` and `optional` as the kubelet does.
pub fn project(
    volume: &SimVolume,
    data: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<BTreeMap<String, Vec<u8>>, ProjectionError> {
    let Some(source) = &volume.source else {
        return Ok(BTreeMap::new());
    };
    let Some(data) = data else {
        return if volume.optional {
            Ok(BTreeMap::new())
        } else {
            Err(ProjectionError::NotFound(source.clone()))
        };
    };
    match &volume.items {
        None => Ok(data.clone()),
        Some(items) => {
            let mut files = BTreeMap::new();
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.insert(item.path.clone(), value.clone());
                    }
                    None if volume.optional => {}
                    None => {
                        return Err(ProjectionError::MissingKey {
                            object: source.clone(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
            Ok(files)
        }
    }
}

/// The kubelet's name for a timestamped data directory, e.g. `..2026_12_02_05_55_00.123456789`.
pub fn timestamp_dir(now: chrono::DateTime<chrono::Utc>) -> String {
    format!("..{}", now.format("%Y_%m_%d_%H_%M_%S%.9f"))
}

/// Writes `files` (relative path → content) into `dir` the way the kubelet's atomic writer
/// does: a new timestamped directory, `..data_tmp -> it` renamed over `..data`, a symlink per
/// top-level path into `..data`, stale links and the previous directory removed. Nothing is
/// written when the content is what `..data` already holds. Returns whether it wrote.
pub fn write_atomic(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    now: chrono::DateTime<chrono::Utc>,
) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    if old.is_some() && read_tree(&data)? == *files {
        return Ok(false);
    }
    let mut name = timestamp_dir(now);
    while dir.join(&name).exists() {
        name.push('0');
    }
    let ts = dir.join(&name);
    std::fs::create_dir(&ts)?;
    for (path, content) in files {
        let file = ts.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, &data)?;

    let wanted: BTreeSet<String> = files.keys().filter_map(|p| top_level(p)).collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with("..") || wanted.contains(&file_name) {
            continue;
        }
        let is_our_link =
            std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with("..data"));
        if is_our_link {
            std::fs::remove_file(entry.path())?;
        }
    }
    for top in &wanted {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    if let Some(old) = old
        && old != Path::new(&name)
    {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

fn top_level(path: &str) -> Option<String> {
    path.split('/').find(|c| !c.is_empty()).map(str::to_string)
}

// Every file under `dir` (through the `..data` symlink), by path relative to it.
fn read_tree(dir: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .expect("under its base")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn at(nanos: u32) -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone as _;
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 2, 5, 55, 0)
            .unwrap()
            .with_nanosecond(nanos)
            .unwrap()
    }

    use chrono::Timelike as _;

    #[test]
    fn names_directories_as_the_kubelet_does() {
        assert_eq!(
            timestamp_dir(at(123_456_789)),
            "..2026_12_02_05_55_00.123456789"
        );
    }

    #[test]
    fn lays_out_swaps_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(write_atomic(&dir, &files(&[("a.yaml", "1"), ("b", "x")]), at(1)).unwrap());
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert_eq!(first, Path::new("..2026_12_02_05_55_00.000000001"));
        assert_eq!(
            std::fs::read_link(dir.join("a.yaml")).unwrap(),
            Path::new("..data/a.yaml")
        );
        assert_eq!(std::fs::read_to_string(dir.join("a.yaml")).unwrap(), "1");

        // The same content: nothing written.
        assert!(!write_atomic(&dir, &files(&[("a.yaml", "1"), ("b", "x")]), at(2)).unwrap());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        // A change: a new directory, the old one gone, a removed key's link gone.
        assert!(write_atomic(&dir, &files(&[("a.yaml", "2"), ("sub/c", "y")]), at(3)).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a.yaml")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(dir.join("sub/c")).unwrap(), "y");
        assert!(!dir.join(&first).exists());
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        assert!(!dir.join("..data_tmp").exists());
    }

    fn volume(items: Option<Vec<(&str, &str)>>, optional: bool) -> SimVolume {
        SimVolume {
            name: "v".into(),
            dir: PathBuf::from("/nowhere"),
            source: Some(Source::ConfigMap("cm".into())),
            items: items.map(|items| {
                items
                    .into_iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.into(),
                        path: path.into(),
                        mode: None,
                    })
                    .collect()
            }),
            optional,
        }
    }

    #[test]
    fn projects_items_and_optional() {
        let data = files(&[("a", "1"), ("b", "2")]);
        assert_eq!(project(&volume(None, false), Some(&data)).unwrap(), data);
        assert_eq!(
            project(&volume(Some(vec![("a", "conf/a.txt")]), false), Some(&data)).unwrap(),
            files(&[("conf/a.txt", "1")])
        );
        assert_eq!(
            project(&volume(Some(vec![("zz", "z")]), false), Some(&data)),
            Err(ProjectionError::MissingKey {
                object: Source::ConfigMap("cm".into()),
                key: "zz".into()
            })
        );
        assert_eq!(
            project(&volume(Some(vec![("zz", "z")]), true), Some(&data)).unwrap(),
            BTreeMap::new()
        );
        assert!(project(&volume(None, false), None).is_err());
        assert_eq!(project(&volume(None, true), None).unwrap(), BTreeMap::new());
    }
}
