//! What the agent persists beside its output file, so that a restarted agent knows what the
//! application has: `.<output name>.hotconf-state.json` in the output's directory, written
//! atomically after each hand-off.
//!
//! At start, when the output file still holds exactly the bytes the state describes (its
//! SHA-256 matches), the agent serves that document as its last good one before any source has
//! answered: `/readyz` is 200, the revision is in the metrics and the log says so; a source that
//! is unreachable at start does not make the pod unready while the application runs on a good
//! configuration. And a document written but never announced (the application was down, then
//! the agent was killed) is announced by the restarted agent instead of being taken as known.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::sha256_hex;

/// The persisted state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The revision handed on, when known.
    pub revision: Option<i64>,
    /// The document's hash (the operator's).
    pub hash: String,
    /// The source content's identity (see [`super::source::Snapshot::identity`]).
    pub identity: String,
    /// The owning CR's kind, when known.
    pub kind: Option<String>,
    /// The owning CR's name, when known.
    pub name: Option<String>,
    /// SHA-256 of the output file's bytes.
    pub output_sha256: String,
    /// Whether the application was told about it.
    pub announced: bool,
    /// The flags OFREP answers from for this document (absent in older state files).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub flags: serde_json::Map<String, serde_json::Value>,
}

/// Where the state of `output` is kept.
pub fn path_for(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.hotconf-state.json"))
}

/// The state of `output`, when it is there, parses and still describes the file's bytes.
pub fn read(output: &Path) -> Option<State> {
    let text = std::fs::read_to_string(path_for(output)).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    let bytes = std::fs::read(output).ok()?;
    (sha256_hex(&bytes) == state.output_sha256).then_some(state)
}

/// Writes the state of `output` (atomically).
pub fn write(output: &Path, state: &State) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    super::handoff::write_atomic(&path_for(output), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_holds_only_while_it_describes_the_output() {
        let tmp = tempfile::tempdir().unwrap();
        let output = tmp.path().join("config.yaml");
        std::fs::write(&output, "a: 1\n").unwrap();
        let state = State {
            revision: Some(4),
            hash: "sha256:x".into(),
            identity: "id".into(),
            kind: Some("RuntimeConfig".into()),
            name: Some("app".into()),
            output_sha256: sha256_hex(b"a: 1\n"),
            announced: false,
            flags: serde_json::json!({"f": {"enabled": true}})
                .as_object()
                .cloned()
                .unwrap(),
        };
        write(&output, &state).unwrap();
        assert_eq!(
            path_for(&output),
            tmp.path().join(".config.yaml.hotconf-state.json")
        );
        assert_eq!(read(&output), Some(state));
        std::fs::write(&output, "a: 2\n").unwrap();
        assert_eq!(read(&output), None, "the file changed under it");
    }
}
