//! The admission decisions: validation (the operator's own rules, Secrets resolved as the
//! operator resolves them) and attribution (`hotconf.dev/changed-by` on create and on spec
//! changes).

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::{Api, Client};
use serde_json::Value;

use super::attribution::{self, Claim, Keys};
use crate::crd::{PoolBudget, RuntimeConfig, names};
use crate::kinds::ConfigResource;
use crate::validation::{FieldError, SecretValues};

/// Whether an update changes the spec (attribution and validation only look at those).
pub fn spec_changed(req: &AdmissionRequest<DynamicObject>) -> bool {
    let spec = |o: &Option<DynamicObject>| o.as_ref().map(|o| o.data.get("spec").cloned());
    match req.operation {
        Operation::Create => true,
        Operation::Update => spec(&req.object) != spec(&req.old_object),
        _ => false,
    }
}

/// The errors of the object under review, `None` when it is not a hotconf kind.
pub async fn errors(
    client: &Client,
    req: &AdmissionRequest<DynamicObject>,
) -> Result<Option<Vec<FieldError>>, String> {
    let Some(object) = &req.object else {
        return Ok(None);
    };
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    match req.kind.kind.as_str() {
        "RuntimeConfig" => {
            let obj: RuntimeConfig = typed(value)?;
            let ns = req.namespace.clone().unwrap_or_else(|| "default".into());
            let secrets = resolve(client, &ns, &obj).await?;
            Ok(Some(crate::reconcile::or_projection_errors(
                &obj,
                obj.validate(Some(&secrets)),
            )))
        }
        "PoolBudget" => {
            let obj: PoolBudget = typed(value)?;
            Ok(Some(crate::reconcile::or_projection_errors(
                &obj,
                obj.validate(None),
            )))
        }
        _ => Ok(None),
    }
}

fn typed<K: serde::de::DeserializeOwned>(value: Value) -> Result<K, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

// valuesFrom exactly as the operator reads it: a missing Secret or key is an error.
async fn resolve<K: ConfigResource>(
    client: &Client,
    ns: &str,
    obj: &K,
) -> Result<SecretValues, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let resolved = crate::controller::resolve_secrets(obj, &api)
        .await
        .map_err(|e| format!("reading the referenced Secrets: {e}"))?;
    Ok(crate::reconcile::secret_values(&resolved))
}

/// The validating webhook's answer.
pub async fn validate(client: &Client, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    // Only spec changes are judged: a rollback annotation on an object whose spec predates the
    // webhook must still go through.
    if !spec_changed(req) {
        return response;
    }
    match errors(client, req).await {
        Ok(None) => response,
        Ok(Some(errors)) if errors.is_empty() => response,
        Ok(Some(errors)) => response.deny(denial(&req.kind.kind, &req.name, &errors)),
        Err(e) => response.deny(format!("hotconf could not read the object: {e}")),
    }
}

// The proof for `user` of the object under review, from its typed spec (as the operator reads
// it); `None` without a key or for an object that does not parse (validation refuses it).
fn proof(req: &AdmissionRequest<DynamicObject>, user: &str, keys: &Keys) -> Option<String> {
    let object = req.object.as_ref()?;
    let value = serde_json::to_value(object).ok()?;
    let spec = match req.kind.kind.as_str() {
        "RuntimeConfig" => attribution::spec_digest(&typed::<RuntimeConfig>(value).ok()?.spec),
        "PoolBudget" => attribution::spec_digest(&typed::<PoolBudget>(value).ok()?.spec),
        _ => return None,
    };
    keys.sign(&Claim {
        kind: &req.kind.kind,
        namespace: req.namespace.as_deref().unwrap_or("default"),
        name: object.metadata.name.as_deref().unwrap_or(&req.name),
        user,
        spec: &spec,
    })
}

/// The message of a refusal: every error, one per line.
pub fn denial(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
    format!(
        "{kind} {name:?} is invalid ({} error{}):\n{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        list.join("\n")
    )
}

/// The mutating webhook's answer: `hotconf.dev/changed-by` = the requesting user on create and
/// on spec changes, with `hotconf.dev/changed-by-proof` that the operator verifies (see
/// [`attribution`]; empty before the webhook has its key); nothing else is touched.
pub fn attribute(req: &AdmissionRequest<DynamicObject>, keys: &Keys) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    if !spec_changed(req) {
        return response;
    }
    let Some(user) = req.user_info.username.clone().filter(|u| !u.is_empty()) else {
        return response;
    };
    let proof = proof(req, &user, keys).unwrap_or_default();
    let has_annotations = req
        .object
        .as_ref()
        .is_some_and(|o| o.metadata.annotations.is_some());
    let ops = if has_annotations {
        [(names::CHANGED_BY, user), (names::CHANGED_BY_PROOF, proof)]
            .into_iter()
            .map(|(key, value)| {
                PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens(["metadata", "annotations", key]),
                    value: Value::String(value),
                })
            })
            .collect()
    } else {
        vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: serde_json::json!({ names::CHANGED_BY: user, names::CHANGED_BY_PROOF: proof }),
        })]
    };
    match response.clone().with_patch(Patch(ops)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not build the attribution patch");
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn review(
        operation: &str,
        object: Value,
        old: Option<Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "hotconf.dev", "version": "v1alpha1", "kind": "RuntimeConfig"},
                "resource": {"group": "hotconf.dev", "version": "v1alpha1", "resource": "runtimeconfigs"},
                "name": "app",
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
                "dryRun": false
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn rtc(annotations: Option<Value>, spec: Value) -> Value {
        let mut meta = json!({"name": "app", "namespace": "shop"});
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig", "metadata": meta, "spec": spec})
    }

    fn patch_of(r: &AdmissionResponse) -> Value {
        use base64::Engine as _;
        let bytes = match r.patch.clone() {
            Some(bytes) => bytes,
            None => return Value::Null,
        };
        // The patch travels base64-encoded in the review; here it is the raw bytes, or text.
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&bytes)
                .unwrap();
            serde_json::from_slice(&decoded).unwrap()
        })
    }

    #[test]
    fn creates_are_attributed_with_a_proof_the_operator_verifies() {
        let keys = Keys::default();
        keys.learn(b"the CA key");
        let object = rtc(None, json!({"values": {"a": 1}}));
        let r = attribute(&review("CREATE", object.clone(), None), &keys);
        let patch = patch_of(&r);
        assert_eq!(patch[0]["path"], "/metadata/annotations");
        let annotations = &patch[0]["value"];
        assert_eq!(annotations[names::CHANGED_BY], "alice");
        let proof = annotations[names::CHANGED_BY_PROOF].as_str().unwrap();

        // The operator's check, on the object as stored (the webhook's patch applied).
        let mut stored: RuntimeConfig = serde_json::from_value(object).unwrap();
        stored.metadata.annotations = Some(serde_json::from_value(annotations.clone()).unwrap());
        let attested = |o: &RuntimeConfig| crate::controller::attested_author(o, &keys);
        assert_eq!(attested(&stored).as_deref(), Some("alice"));
        // Without the key (no webhook), or with the annotation edited, or with the spec
        // changed past the webhook, nobody is vouched for.
        assert_eq!(
            crate::controller::attested_author(&stored, &Keys::default()),
            None
        );
        stored.spec.values.insert("a".into(), json!(2));
        assert_eq!(attested(&stored), None, "a spec the webhook did not see");
        stored.spec.values.insert("a".into(), json!(1));
        assert_eq!(attested(&stored).as_deref(), Some("alice"));
        let a = stored.metadata.annotations.as_mut().unwrap();
        a.insert(names::CHANGED_BY.into(), "mallory".into());
        assert_eq!(attested(&stored), None, "a claim the webhook did not make");
        assert!(!proof.is_empty());

        // An object with annotations gets both keys added; before the webhook has a key, the
        // proof is empty (and verifies for nobody).
        let r = attribute(
            &review("CREATE", rtc(Some(json!({"x": "y"})), json!({})), None),
            &Keys::default(),
        );
        assert_eq!(
            patch_of(&r),
            json!([
                {"op": "add", "path": "/metadata/annotations/hotconf.dev~1changed-by", "value": "alice"},
                {"op": "add", "path": "/metadata/annotations/hotconf.dev~1changed-by-proof", "value": ""}
            ])
        );
    }

    #[test]
    fn only_spec_changes_are_attributed() {
        let old = rtc(None, json!({"values": {"a": 1}}));
        let same = rtc(
            Some(json!({"hotconf.dev/rollback-to": "2"})),
            json!({"values": {"a": 1}}),
        );
        let r = attribute(&review("UPDATE", same, Some(old.clone())), &Keys::default());
        assert_eq!(
            patch_of(&r),
            Value::Null,
            "an annotation change is left alone"
        );
        let changed = rtc(None, json!({"values": {"a": 2}}));
        let r = attribute(&review("UPDATE", changed, Some(old)), &Keys::default());
        assert_ne!(patch_of(&r), Value::Null);
    }

    #[test]
    fn denials_list_every_error() {
        let errors = vec![
            FieldError {
                path: "spec.a".into(),
                value: Some("1".into()),
                rule: "must be a string".into(),
            },
            FieldError {
                path: "spec.b".into(),
                value: None,
                rule: "must be set".into(),
            },
        ];
        let text = denial("RuntimeConfig", "app", &errors);
        assert!(text.contains("2 errors"));
        assert!(text.contains("spec.a: must be a string (got 1)"));
        assert!(text.contains("spec.b: must be set"));
    }
}
