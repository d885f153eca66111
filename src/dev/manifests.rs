//! Reading Kubernetes manifests (multi-document YAML files and directories) and applying them
//! with server-side apply, whatever their kind.

use std::path::{Path, PathBuf};

use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{Discovery, Scope},
};

use super::error::Error;

/// One YAML document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file it came from.
    pub file: PathBuf,
    /// Its index in the file, from 0.
    pub index: usize,
    /// Its content.
    pub value: serde_json::Value,
}

/// The `.yaml`/`.yml`/`.json` files among `paths`, directories expanded (one level, sorted).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Parses every non-empty YAML document of `text`, as kubectl reads it ([`crate::manifest`]).
pub fn parse(file: &Path, text: &str) -> Result<Vec<Document>, Error> {
    let (parsed, error) = crate::manifest::documents(text);
    if let Some(e) = error {
        return Err(Error::Manifest {
            path: file.to_path_buf(),
            message: format!("document {}: {e}", parsed.len()),
        });
    }
    Ok(parsed
        .into_iter()
        .enumerate()
        .filter(|(_, doc)| !doc.value.is_null())
        .map(|(index, doc)| Document {
            file: file.to_path_buf(),
            index,
            value: doc.value,
        })
        .collect())
}

/// Reads and parses every document in `paths`.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Document>, Error> {
    let mut docs = Vec::new();
    for file in files(paths)? {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        docs.extend(parse(&file, &text)?);
    }
    Ok(docs)
}

/// Applies every document in `paths` with server-side apply as `manager`; namespaced objects
/// without a namespace go to `default`. Returns `kind/namespace/name` of each.
pub async fn apply_paths(
    client: &Client,
    paths: &[PathBuf],
    manager: &str,
) -> Result<Vec<String>, Error> {
    let docs = read(paths)?;
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut applied = Vec::new();
    for doc in docs {
        let obj: DynamicObject =
            serde_json::from_value(doc.value.clone()).map_err(|e| Error::Manifest {
                path: doc.file.clone(),
                message: format!("document {}: {e}", doc.index),
            })?;
        let gvk = obj
            .types
            .as_ref()
            .map(GroupVersionKind::try_from)
            .transpose()
            .map_err(|e| Error::Manifest {
                path: doc.file.clone(),
                message: format!("document {}: {e}", doc.index),
            })?
            .ok_or_else(|| Error::Manifest {
                path: doc.file.clone(),
                message: format!("document {}: no apiVersion/kind", doc.index),
            })?;
        let (resource, caps) = discovery.resolve_gvk(&gvk).ok_or_else(|| Error::Manifest {
            path: doc.file.clone(),
            message: format!(
                "document {}: the server does not serve {}/{} {}",
                doc.index, gvk.group, gvk.version, gvk.kind
            ),
        })?;
        let name = obj.name_any();
        let (api, shown) = if caps.scope == Scope::Namespaced {
            let ns = obj.namespace().unwrap_or_else(|| "default".into());
            let shown = format!("{}/{ns}/{name}", gvk.kind);
            (
                Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource),
                shown,
            )
        } else {
            (
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                format!("{}/{name}", gvk.kind),
            )
        };
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&obj),
        )
        .await?;
        applied.push(shown);
    }
    Ok(applied)
}
