//! Reporting on the agent's own Pod: the `hotconf.dev/applied` annotation (kind, name,
//! revision, hash, time, error), written with a JSON merge patch of `metadata.annotations`
//! only, so nothing else on the Pod is touched and `patch` on pods is the only permission
//! needed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::crd::names;

/// The value of the `hotconf.dev/applied` annotation (as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The owning CR's kind (`RuntimeConfig` or `PoolBudget`), when known.
    pub kind: Option<String>,
    /// The owning CR's name, when known.
    pub name: Option<String>,
    /// The revision handed to the application (the last good one after a refusal).
    pub revision: Option<i64>,
    /// Its hash.
    pub hash: Option<String>,
    /// When this report was made (RFC 3339).
    pub at: String,
    /// Why the latest document was refused or its hand-off failed; `null` when all is well.
    pub error: Option<String>,
    /// The revision `error` is about (absent when all is well).
    #[serde(
        default,
        rename = "failedRevision",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_revision: Option<i64>,
}

/// The merge patch that sets the annotation and nothing else.
pub fn patch_body(applied: &Applied) -> Value {
    let text = serde_json::to_string(applied).expect("serializable");
    json!({"metadata": {"annotations": {names::APPLIED: text}}})
}

/// Sends reports to the Pod in the background: only the newest report matters, so a report
/// made while an older one is being written replaces it, and failed patches are retried with
/// backoff.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: watch::Sender<Option<Applied>>,
}

impl Reporter {
    /// Starts the background writer for Pod `namespace/pod`.
    pub fn spawn(client: Client, namespace: &str, pod: &str) -> Reporter {
        let (tx, mut rx) = watch::channel(None::<Applied>);
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let pod = pod.to_string();
        tokio::spawn(async move {
            // A report that arrives while one is being written marks the channel changed, so
            // the next turn sends it.
            while rx.changed().await.is_ok() {
                let mut wait = Duration::from_millis(200);
                loop {
                    let Some(applied) = rx.borrow_and_update().clone() else {
                        break;
                    };
                    let patch = Patch::Merge(patch_body(&applied));
                    match api.patch(&pod, &PatchParams::default(), &patch).await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "annotating the Pod failed; retrying");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // A newer report replaces the one that failed.
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        });
        Reporter { tx }
    }

    /// Queues a report.
    pub fn report(&self, applied: Applied) {
        self.tx.send_replace(Some(applied));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_touches_only_the_annotation() {
        let applied = Applied {
            kind: Some("RuntimeConfig".into()),
            name: Some("lazy".into()),
            revision: Some(3),
            hash: Some("abc".into()),
            at: "2026-01-01T00:00:00Z".into(),
            error: None,
            failed_revision: None,
        };
        let body = patch_body(&applied);
        assert_eq!(body.as_object().unwrap().len(), 1);
        let text = body["metadata"]["annotations"][names::APPLIED]
            .as_str()
            .unwrap();
        let back: Applied = serde_json::from_str(text).unwrap();
        assert_eq!(back, applied);
        let v: Value = serde_json::from_str(text).unwrap();
        for field in ["kind", "name", "revision", "hash", "at", "error"] {
            assert!(v.get(field).is_some(), "{field} present");
        }
    }
}
