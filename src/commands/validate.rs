//! `hotconf validate -f PATH...`: the operator's own validation, offline, for GitOps CI.
//!
//! Every error is one line on stdout, `file:line Kind/namespace/name: field.path: rule`;
//! notes (skipped documents, references that cannot be resolved offline) go to stderr. The exit
//! code is 1 when anything is wrong, 0 otherwise. `valuesFrom` references resolve against Secret
//! manifests among the inputs; the others cannot be read offline and are a note, or an error
//! with `--strict-refs`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::json;

use super::Output;
use super::input::{self, Content, Doc, InputArgs, Problem, SecretManifests};
use crate::kinds::ConfigResource;

/// Arguments of `hotconf validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The manifests.
    #[command(flatten)]
    pub input: InputArgs,
    /// Treat a `valuesFrom` reference that cannot be resolved offline (no Secret manifest among
    /// the inputs) as an error instead of a note.
    #[arg(long, env = "HOTCONF_STRICT_REFS")]
    pub strict_refs: bool,
    /// `text`: one line per error; `json`: one object per document, for programs.
    #[arg(
        short = 'o',
        long,
        value_enum,
        env = "HOTCONF_OUTPUT",
        default_value_t = Output::Text
    )]
    pub output: Output,
}

/// Why an unresolved reference is unresolved; also how its error is recognised.
const OFFLINE: &str = "no Secret manifest among the inputs provides it, and Secrets in the \
                       cluster are not read offline";

/// Runs `hotconf validate`.
pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut inputs = input::read(&args.input);
    judge(&mut inputs.docs, &inputs.secrets, args.strict_refs);
    let failed = inputs.docs.iter().any(|d| !d.problems.is_empty());
    match args.output {
        Output::Json => {
            let entries: Vec<_> = inputs.docs.iter().map(entry).collect();
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
        Output::Text => print_text(&inputs.docs),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `hotconf validate` reports for one manifest text (its hotconf objects' errors, as
/// (field path, rule)), with `valuesFrom` left unresolved: for tests that compare this verdict
/// with an API server's.
pub fn problems_in(text: &str, namespace: &str) -> Vec<(String, String)> {
    let mut inputs = super::input::read_text("<text>", text, namespace);
    judge(&mut inputs.docs, &inputs.secrets, false);
    inputs
        .docs
        .into_iter()
        .flat_map(|d| d.problems)
        .map(|p| (p.path, p.rule))
        .collect()
}

/// Runs the operator's validation on every hotconf object among `docs`, adding its errors and
/// notes to each document.
pub fn judge(docs: &mut [Doc], secrets: &SecretManifests, strict_refs: bool) {
    for doc in docs {
        let ns = doc.namespace.clone().unwrap_or_default();
        let (problems, notes) = match &doc.content {
            Content::RuntimeConfig(obj) => check(obj.as_ref(), &ns, secrets, strict_refs),
            Content::PoolBudget(obj) => check(obj.as_ref(), &ns, secrets, strict_refs),
            Content::Broken | Content::Other | Content::Unreadable => continue,
        };
        doc.problems.extend(problems);
        doc.notes.extend(notes);
    }
}

/// The operator's verdict on one object, with its `valuesFrom` resolved from `secrets` where
/// they can be.
fn check<K: ConfigResource>(
    obj: &K,
    ns: &str,
    secrets: &SecretManifests,
    strict_refs: bool,
) -> (Vec<Problem>, Vec<String>) {
    let refs = obj.secret_refs();
    if refs.is_empty() {
        return (
            crate::reconcile::or_projection_errors(obj, obj.validate(None))
                .into_iter()
                .map(Problem::from)
                .collect(),
            Vec::new(),
        );
    }
    let mut values = BTreeMap::new();
    let mut unresolved = Vec::new();
    let mut notes = Vec::new();
    for (i, (key, reference)) in refs.iter().enumerate() {
        let found = secrets.get(&(ns.to_string(), reference.name.clone()));
        let value = match found {
            Some(keys) => match keys.get(&reference.key) {
                Some(text) => Ok(text.clone()),
                None => Err("the Secret manifest among the inputs has no such key".to_string()),
            },
            None => {
                unresolved.push(format!("spec.valuesFrom[{i}].secretKeyRef"));
                if !strict_refs {
                    notes.push(format!(
                        "spec.valuesFrom[{i}] ({key}): key {:?} of Secret {:?} cannot be \
                         resolved offline, so its value is not checked (--strict-refs makes \
                         this an error)",
                        reference.key, reference.name
                    ));
                }
                Err(OFFLINE.to_string())
            }
        };
        values.insert(key.clone(), value);
    }
    let problems = crate::reconcile::or_projection_errors(obj, obj.validate(Some(&values)))
        .into_iter()
        .filter(|e| strict_refs || !(unresolved.contains(&e.path) && e.rule.ends_with(OFFLINE)))
        .map(Problem::from)
        .collect();
    (problems, notes)
}

fn entry(doc: &Doc) -> serde_json::Value {
    json!({
        "file": doc.file,
        "index": doc.index,
        "line": doc.line,
        "kind": doc.kind,
        "namespace": doc.namespace,
        "name": doc.name,
        "skipped": !doc.is_hotconf() && !doc.is_unreadable(),
        "valid": doc.is_hotconf() && doc.problems.is_empty(),
        "errors": doc.problems,
        "notes": doc.notes,
    })
}

fn print_text(docs: &[Doc]) {
    let (mut checked, mut invalid, mut errors, mut skipped, mut unreadable) = (0, 0, 0, 0, 0);
    for doc in docs {
        let subject = if doc.kind.is_some() {
            format!("{} {}", doc.location(), doc.object())
        } else {
            doc.location()
        };
        for problem in &doc.problems {
            println!("{subject}: {problem}");
        }
        for note in &doc.notes {
            eprintln!("{subject}: note: {note}");
        }
        if doc.is_hotconf() {
            checked += 1;
            if !doc.problems.is_empty() {
                invalid += 1;
            }
            errors += doc.problems.len();
        } else if doc.is_unreadable() {
            unreadable += 1;
        } else {
            skipped += 1;
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut summary = format!(
        "{} checked: {} valid, {} invalid ({}); {} skipped",
        plural(checked, "hotconf object"),
        checked - invalid,
        invalid,
        plural(errors, "error"),
        plural(skipped, "document"),
    );
    if unreadable > 0 {
        summary.push_str(&format!(
            "; {} unreadable",
            plural(unreadable, "file or document")
        ));
    }
    eprintln!("{summary}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RuntimeConfig;
    use kube::ResourceExt as _;

    fn rtc(yaml: &str) -> RuntimeConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    const WITH_REF: &str = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a, namespace: shop}\nspec:\n  schema: {port: {type: integer, maximum: 100, sensitive: true}}\n  valuesFrom: [{key: port, secretKeyRef: {name: s, key: k}}]\n";

    #[test]
    fn an_unresolved_reference_is_a_note_unless_strict() {
        let obj = rtc(WITH_REF);
        let (problems, notes) = check(&obj, "shop", &SecretManifests::new(), false);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("cannot be resolved offline"), "{notes:?}");
        let (problems, notes) = check(&obj, "shop", &SecretManifests::new(), true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "spec.valuesFrom[0].secretKeyRef");
        assert!(notes.is_empty());
    }

    #[test]
    fn a_secret_manifest_resolves_and_its_value_is_checked() {
        let obj = rtc(WITH_REF);
        let secrets = SecretManifests::from([(
            ("shop".to_string(), "s".to_string()),
            BTreeMap::from([("k".to_string(), "500".to_string())]),
        )]);
        let (problems, notes) = check(&obj, "shop", &secrets, false);
        assert!(notes.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].rule.contains("at most 100"), "{problems:?}");
        assert!(!problems[0].to_string().contains("500"), "never shown");
        let missing_key =
            SecretManifests::from([(("shop".to_string(), "s".to_string()), BTreeMap::new())]);
        let (problems, _) = check(&obj, "shop", &missing_key, false);
        assert!(problems[0].rule.contains("no such key"), "{problems:?}");
        // A Secret of the same name in another namespace does not count.
        let (problems, notes) = check(&obj, "other", &secrets, false);
        assert!(problems.is_empty() && notes.len() == 1);
    }

    #[test]
    fn every_error_is_reported() {
        let obj = rtc(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a}\nspec:\n  schema: {n: {type: integer, maximum: 3}}\n  values: {n: 9, other: 1}\n",
        );
        let (problems, _) = check(&obj, "default", &SecretManifests::new(), false);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(obj.name_any(), "a");
    }
}
