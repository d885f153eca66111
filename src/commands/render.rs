//! `hotconf render -f PATH...`: the ConfigMaps (and the shape of the Secrets) the operator would
//! project for the given manifests, as multi-document YAML to diff in a pull request.
//!
//! The data comes from the operator's own code ([`ConfigResource::evaluate`] at the current
//! time, [`projection::config_map_data`]), so the document key holds the same bytes the operator
//! writes. What cannot be known offline is left out or marked:
//! - `hotconf.dev/revision` is assigned by the operator: the annotation is left out, and so is
//!   the data key `.hotconf.json` ([`projection::META_KEY`]) that repeats it for the agents.
//! - Secret values are written as `<redacted>` (only their keys are shown).
//! - A RuntimeConfig with `valuesFrom`: each reference's `fingerprint` is salted with the
//!   Secret's uid in the cluster, so offline it is `null`. Such a document (and its hash) differs
//!   from the projected one in those fingerprints only; the hash annotation is left out and a
//!   comment says so.
//!
//! Invalid objects are reported as `validate` reports them (on stderr) and rendered not at all;
//! paused objects are skipped with a note, as the operator projects nothing for them.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kube::ResourceExt as _;
use serde_json::{Value, json};

use super::input::{self, Content, Doc, InputArgs};
use super::validate;
use crate::crd::names;
use crate::document;
use crate::kinds::ConfigResource;
use crate::projection::{self, ResolvedTarget};

/// What a Secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Arguments of `hotconf render`.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// The manifests.
    #[command(flatten)]
    pub input: InputArgs,
}

/// Runs `hotconf render`.
pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let mut inputs = input::read(&args.input);
    validate::judge(&mut inputs.docs, &inputs.secrets, false);
    let now = chrono::Utc::now();
    let mut failed = false;
    let mut out = String::new();
    for doc in &inputs.docs {
        let subject = format!("{} {}", doc.location(), doc.object());
        if !doc.problems.is_empty() {
            failed = true;
            for problem in &doc.problems {
                if doc.kind.is_some() {
                    eprintln!("{subject}: {problem}");
                } else {
                    eprintln!("{}: {problem}", doc.location());
                }
            }
            continue;
        }
        let rendered = match &doc.content {
            Content::RuntimeConfig(obj) => render(obj.as_ref(), doc, now),
            Content::PoolBudget(obj) => render(obj.as_ref(), doc, now),
            Content::Broken | Content::Other | Content::Unreadable => continue,
        };
        match rendered {
            Some(text) => out.push_str(&text),
            None => eprintln!(
                "{subject}: note: spec.paused is true: the operator records revisions but \
                 projects nothing"
            ),
        }
    }
    print!("{out}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The YAML documents (with a leading `---` each) the operator would project for a valid
/// object, or `None` when it is paused.
pub fn render<K: ConfigResource>(
    obj: &K,
    doc: &Doc,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if obj.paused() {
        return None;
    }
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let target = ResolvedTarget::resolve(obj.target(), &name);
    let refs = obj.secret_refs();
    let effective = obj.evaluate(&BTreeMap::new(), now);
    let mut annotations = serde_json::Map::new();
    let mut header = format!(
        "---\n# ConfigMap of {}/{namespace}/{name} ({})\n",
        K::KIND,
        doc.location()
    );
    if refs.is_empty() {
        annotations.insert(
            names::HASH.into(),
            Value::String(document::hash(&effective.document)),
        );
    } else {
        header.push_str(
            "# valuesFrom fingerprints are salted with each Secret's uid in the cluster: offline\n\
             # they are null, so this document and its hash differ from the projected one there.\n",
        );
    }
    let mut metadata = json!({
        "name": target.name,
        "namespace": namespace,
        "labels": projection::labels(K::KIND, &name),
    });
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": projection::config_map_data(&effective.document, &target),
    });
    let mut text = header;
    text.push_str(&crate::document::yaml::to_string(&config_map));
    if !refs.is_empty() {
        let data: BTreeMap<String, &str> = refs.into_iter().map(|(k, _)| (k, REDACTED)).collect();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": metadata,
            "data": data,
        });
        text.push_str(&format!(
            "---\n# Secret of {}/{namespace}/{name}: values redacted\n",
            K::KIND
        ));
        text.push_str(&crate::document::yaml::to_string(&secret));
    }
    Some(text)
}
