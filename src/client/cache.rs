//! The client's cache file: the last good document, kept so that a process that starts while
//! its sources are unreachable has a configuration (see [`super::Options::cache_file`]).
//!
//! One JSON object, written atomically (temporary file, fsync, rename) with mode 0600, since the
//! document may hold sensitive values merged from the projected Secret. It carries a checksum
//! of the document it stores: a truncated or edited file is refused, not served.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Document;

/// What the cache file holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Stored {
    /// The revision, when known.
    pub revision: Option<i64>,
    /// The operator's hash of the document.
    pub hash: String,
    /// The content identity the sources gave it.
    pub identity: Option<String>,
    /// The restart keys the projection named.
    #[serde(default)]
    pub restart_keys: Vec<String>,
    /// The document as the handle read it.
    pub document: Value,
    /// `document::hash` of `document`, to tell a damaged file.
    pub checksum: String,
}

impl Stored {
    pub(super) fn of(doc: &Document) -> Stored {
        Stored {
            revision: doc.revision,
            hash: doc.hash.clone(),
            identity: Some(doc.identity.clone()),
            restart_keys: doc.restart_keys.clone(),
            checksum: crate::document::hash(&doc.value),
            document: doc.value.clone(),
        }
    }
}

/// Reads the cache file, refusing one that does not parse or whose checksum does not match.
pub(super) fn read(file: &Path) -> Result<Stored, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let stored: Stored =
        serde_json::from_str(&text).map_err(|e| format!("it does not parse: {e}"))?;
    if crate::document::hash(&stored.document) != stored.checksum {
        return Err("its checksum does not match its document (damaged or edited)".into());
    }
    Ok(stored)
}

/// Writes the cache file atomically with mode 0600; a failure is logged (the handle works on
/// without a cache).
pub(super) async fn write_stored(file: &Path, stored: Stored) {
    let file = file.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        let bytes = serde_json::to_vec(&stored).expect("a document serializes");
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        crate::agent::handoff::write_atomic_mode(&file, &bytes, 0o600).map(|()| file)
    })
    .await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "writing the client's cache file failed"),
        Err(e) => tracing::warn!(error = %e, "writing the client's cache file failed"),
    }
}
