//! Validation of both kinds: every rule of SPEC.md §3–§5.1, as pure functions.
//!
//! The CRD schema and its CEL rules catch much of this at admission, but the operator runs the
//! complete rule set itself on every reconcile (and `hotconf validate` runs it offline), so the
//! verdict never depends on what the API server enforces. Every function returns all errors at
//! once. An error never carries a sensitive value, a value read from a Secret, or a literal that
//! looks like a credential: those errors have `value: None` and rule texts that do not quote them.
//!
//! One file per kind ([`runtime_config`], [`pool_budget`]), the credential detection both use
//! ([`credentials`]), and here what they share: the error type, the rules of `spec.target` and
//! `spec.revisionHistoryLimit`, and the size helpers. Durations are parsed by
//! [`crate::duration`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::crd::{MAX_HISTORY_LIMIT, Target};
use crate::projection::META_KEY;

mod credentials;
mod patterns;
mod pool_budget;
mod runtime_config;
#[cfg(test)]
mod tests;

#[allow(unused_imports)]
use credentials::*;
pub use credentials::{credential_kind, is_credential_key};
#[allow(unused_imports)]
use patterns::*;
pub use pool_budget::validate_pool_budget;
#[allow(unused_imports)]
use pool_budget::*;
pub use runtime_config::validate_runtime_config;
#[allow(unused_imports)]
use runtime_config::*;

// The PoolBudget defaults live with the bounds, in `crate::crd::bounds`.
use crate::crd::bounds::defaults;

/// The most a condition message may hold: the CRD's `maxLength` (32768 characters) with room to
/// spare, in bytes (which are never fewer than characters).
pub const CONDITION_MESSAGE_BUDGET: usize = 32_000;
/// The most an Event note may hold (events.k8s.io/v1 allows 1 KiB), in bytes.
pub const EVENT_NOTE_BUDGET: usize = 1_000;

/// The errors as one message of at most `budget` bytes: as many whole errors as fit, `; `
/// between them, then `; … and N more errors` for those left out. A spec with hundreds of errors
/// still gets its condition and its Event written, not refused by the server for its size.
pub fn summarize(errors: &[FieldError], budget: usize) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let mut message = String::new();
    for (i, text) in texts.iter().enumerate() {
        let left = texts.len() - i - 1;
        let separator = if message.is_empty() { "" } else { "; " };
        // What must still fit after this error: the note for the ones after it, if any.
        let tail = if left == 0 { 0 } else { more(left).len() + 2 };
        if message.len() + separator.len() + text.len() + tail <= budget {
            message.push_str(separator);
            message.push_str(text);
            continue;
        }
        let rest = texts.len() - i;
        let note = more(rest);
        if message.is_empty() {
            // Not even the first error fits whole: as much of it as fits, on a char boundary.
            let room = budget.saturating_sub(note.len() + 2);
            let mut cut = room.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            message.push_str(&text[..cut]);
            // That error counts as shown (cut), the note names the others.
            if rest > 1 {
                message.push_str("; ");
                message.push_str(&more(rest - 1));
            } else {
                message.push('…');
            }
        } else {
            message.push_str("; ");
            message.push_str(&note);
        }
        return message;
    }
    message
}

fn more(n: usize) -> String {
    format!("… and {n} more error{}", if n == 1 { "" } else { "s" })
}

/// One validation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, with the spec's JSON names, e.g. `spec.pools.database.maxConnections`.
    pub path: String,
    /// The offending value as compact JSON text; `None` when the value is sensitive, comes from
    /// a Secret, or looks like a credential.
    pub value: Option<String>,
    /// The rule that is broken, e.g. `must be at most 3600`.
    pub rule: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            value: None,
            rule: rule.into(),
        }
    }

    fn with_value(mut self, value: impl Into<Value>) -> Self {
        self.value = Some(compact(&value.into()));
        self
    }

    fn with_shown(mut self, shown: Option<String>) -> Self {
        self.value = shown;
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)?;
        if let Some(value) = &self.value {
            write!(f, " (got {value})")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// What the operator learned when resolving `valuesFrom`: `spec.valuesFrom[].key` -> the
/// Secret's value, or why it could not be read.
pub type SecretValues = BTreeMap<String, Result<String, String>>;

/// Values longer than this are cut in errors: a condition message has a size limit.
const MAX_SHOWN_CHARS: usize = 200;

const DURATION_EXAMPLE: &str = "must be a duration such as 30s, 5m or 1h30m";

fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_SHOWN_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SHOWN_CHARS).collect();
    cut.push('…');
    cut
}

/// A value as a reader writes it: strings bare, everything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => compact(other),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by both kinds
// ---------------------------------------------------------------------------------------------

const DNS_SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain: lowercase alphanumerics, '-' or \
     '.', each dot-separated part starting and ending with an alphanumeric, at most 253 characters";
const DATA_KEY_RULE: &str = "must consist of alphanumerics, '-', '_' or '.', be at most 253 \
     characters, not be \".\" and not start with \"..\"";

static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("the DNS-1123 pattern compiles")
});
static DATA_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-._a-zA-Z0-9]+$").expect("the data key pattern compiles"));

/// A name Kubernetes accepts for a ConfigMap or Secret.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && DNS_SUBDOMAIN.is_match(name)
}

/// A key Kubernetes accepts in a ConfigMap's or Secret's data.
fn is_data_key(key: &str) -> bool {
    key.len() <= 253 && key != "." && !key.starts_with("..") && DATA_KEY.is_match(key)
}

/// Rules of `spec.target` and `spec.revisionHistoryLimit` shared by both kinds.
pub fn validate_common(
    target: Option<&Target>,
    revision_history_limit: Option<i32>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(limit) = revision_history_limit
        && !(1..=MAX_HISTORY_LIMIT).contains(&limit)
    {
        errors.push(
            FieldError::new(
                "spec.revisionHistoryLimit",
                format!("must be between 1 and {MAX_HISTORY_LIMIT}"),
            )
            .with_value(limit),
        );
    }
    let Some(target) = target else { return errors };
    if let Some(name) = &target.config_map_name
        && !is_dns_subdomain(name)
    {
        errors.push(
            FieldError::new("spec.target.configMapName", DNS_SUBDOMAIN_RULE)
                .with_value(name.as_str()),
        );
    }
    if let Some(file) = &target.file_name {
        if !is_data_key(file) {
            errors.push(
                FieldError::new("spec.target.fileName", DATA_KEY_RULE).with_value(file.as_str()),
            );
        } else if file == META_KEY {
            errors.push(
                FieldError::new(
                    "spec.target.fileName",
                    format!(
                        "must not be {META_KEY}: the projected ConfigMap holds the revision and \
                         hash under that key for agents that read the mounted volume"
                    ),
                )
                .with_value(file.as_str()),
            );
        }
    }
    if let Some(file) = &target.flagd_file_name {
        let path = "spec.target.flagdFileName";
        let document = target
            .file_name
            .as_deref()
            .unwrap_or(target.format.unwrap_or_default().default_file_name());
        if !is_data_key(file) {
            errors.push(FieldError::new(path, DATA_KEY_RULE).with_value(file.as_str()));
        } else if file == META_KEY || file == document {
            errors.push(
                FieldError::new(
                    path,
                    format!(
                        "must differ from {META_KEY} (the revision and hash) and from the \
                         document's key {document:?}"
                    ),
                )
                .with_value(file.as_str()),
            );
        }
        if target.format == Some(crate::crd::Format::Flagd) {
            errors.push(FieldError::new(
                path,
                "must not be set with format flagd: the document already is the flagd \
                 definition",
            ));
        }
    }
    errors
}
