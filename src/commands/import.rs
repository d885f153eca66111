//! `hotconf import -f export.yaml [--dry-run]`: applies RuntimeConfig and PoolBudget manifests
//! (an export, or any manifest of them) with server-side apply as field manager `hotconf-cli`,
//! after the operator's own validation with their `valuesFrom` Secrets read from the cluster,
//! as the admission webhook reads them.
//!
//! All or nothing before the first write: when any document is unreadable or invalid, every
//! problem is printed (`file:line Kind/namespace/name: field: rule`) and nothing is applied
//! (exit 1). `--dry-run` sends the applies as server dry runs: the API server (and a webhook)
//! judges them, nothing is stored. The change reason recorded in history is the manifest's
//! `hotconf.dev/change-reason`, else `--reason`, else "imported from FILE".

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt as _};
use serde_json::{Value, json};

use super::cluster::{CLI_MANAGER, Cluster, ClusterArgs, connect};
use super::input::{self, Content, Doc, Files, InputArgs, Problem};
use crate::crd::names;
use crate::kinds::ConfigResource;

/// Arguments of `hotconf import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The manifests.
    #[command(flatten)]
    pub files: Files,
    /// Apply as a server dry run: judged by the API server, nothing stored.
    #[arg(long)]
    pub dry_run: bool,
    /// Take over fields another manager owns (server-side apply's `force`), as
    /// `kubectl apply --server-side --force-conflicts` does.
    #[arg(long)]
    pub force_conflicts: bool,
    /// The change reason recorded in history, when a manifest carries none.
    #[arg(long)]
    pub reason: Option<String>,
    /// How to reach the cluster (`-n`: the namespace of manifests that set none).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `hotconf import`.
pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let cluster = connect(&args.cluster).await?;
    let mut inputs = input::read(&InputArgs {
        files: args.files.clone(),
        namespace: cluster.namespace.clone(),
    });
    for doc in &mut inputs.docs {
        let problems = judge(&cluster, doc).await?;
        doc.problems.extend(problems);
    }
    let mut failed = false;
    for doc in &inputs.docs {
        for problem in &doc.problems {
            failed = true;
            eprintln!("{} {}: {problem}", doc.location(), doc.object());
        }
        if !doc.is_hotconf() && !doc.is_unreadable() && doc.problems.is_empty() {
            eprintln!(
                "note: {} {}: not a RuntimeConfig or PoolBudget, skipped",
                doc.location(),
                doc.object()
            );
        }
    }
    if failed {
        eprintln!("nothing was imported: fix the problems above");
        return Ok(ExitCode::FAILURE);
    }
    let objects: Vec<&Doc> = inputs.docs.iter().filter(|d| d.is_hotconf()).collect();
    if objects.is_empty() {
        bail!("no RuntimeConfig or PoolBudget manifest in the input");
    }
    for doc in objects {
        let reason = args
            .reason
            .clone()
            .unwrap_or_else(|| format!("imported from {}", doc.file));
        let done = match &doc.content {
            Content::RuntimeConfig(obj) => apply(&cluster, obj.as_ref(), &args, &reason).await,
            Content::PoolBudget(obj) => apply(&cluster, obj.as_ref(), &args, &reason).await,
            _ => unreachable!("only hotconf objects are applied"),
        };
        match done {
            Ok(generation) => println!(
                "{} {}: {}",
                doc.location(),
                doc.object(),
                if args.dry_run {
                    "valid (server dry run, nothing stored)".to_string()
                } else {
                    format!("applied (generation {generation})")
                }
            ),
            Err(e) => bail!("{} {}: {e}", doc.location(), doc.object()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

// The operator's verdict on a hotconf document, its valuesFrom read from the cluster.
async fn judge(cluster: &Cluster, doc: &Doc) -> anyhow::Result<Vec<Problem>> {
    let ns = doc
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let errors = match &doc.content {
        Content::RuntimeConfig(obj) => validate(cluster, &ns, obj.as_ref()).await?,
        Content::PoolBudget(obj) => validate(cluster, &ns, obj.as_ref()).await?,
        _ => return Ok(Vec::new()),
    };
    Ok(errors.into_iter().map(Problem::from).collect())
}

async fn validate<K: ConfigResource>(
    cluster: &Cluster,
    ns: &str,
    obj: &K,
) -> anyhow::Result<Vec<crate::validation::FieldError>> {
    if obj.secret_refs().is_empty() {
        return Ok(obj.validate(None));
    }
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let resolved = crate::controller::resolve_secrets(obj, &api)
        .await
        .map_err(|e| {
            anyhow!(
                "reading the Secrets that {} {ns}/{} reads through valuesFrom: {e}",
                K::KIND,
                obj.name_any()
            )
        })?;
    Ok(obj.validate(Some(&crate::reconcile::secret_values(&resolved))))
}

// A server message (a list of conflicts spans lines) on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// Server-side apply of the manifest's identity, labels, annotations and spec; the generation
// the object has after it.
async fn apply<K: ConfigResource>(
    cluster: &Cluster,
    obj: &K,
    args: &ImportArgs,
    reason: &str,
) -> anyhow::Result<i64> {
    let ns = obj.namespace().unwrap_or_else(|| cluster.namespace.clone());
    let name = obj.name_any();
    let full = serde_json::to_value(obj)?;
    let mut annotations = obj.annotations().clone();
    annotations
        .entry(names::CHANGE_REASON.to_string())
        .or_insert_with(|| reason.to_string());
    let manifest = json!({
        "apiVersion": full["apiVersion"],
        "kind": full["kind"],
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": obj.labels(),
            "annotations": annotations,
        },
        "spec": full.get("spec").cloned().unwrap_or(Value::Null),
    });
    let mut params = PatchParams::apply(CLI_MANAGER);
    params.force = args.force_conflicts;
    params.dry_run = args.dry_run;
    let api: Api<K> = Api::namespaced(cluster.client.clone(), &ns);
    match api.patch(&name, &params, &Patch::Apply(&manifest)).await {
        Ok(applied) => Ok(applied.meta().generation.unwrap_or_default()),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(anyhow!(
            "another field manager owns some of these fields: {} (--force-conflicts takes them \
             over)",
            one_line(&status.message)
        )),
        Err(kube::Error::Api(status)) => Err(anyhow!(
            "the API server at {} refused it: {}",
            cluster.url,
            one_line(&status.message)
        )),
        Err(e) => Err(anyhow!("applying it at {}: {e}", cluster.url)),
    }
}
