//! The seam between the two kinds and the one pipeline: `RuntimeConfig` and `PoolBudget` each say
//! how they validate and evaluate; everything else (revisions, projection, status, rollback) is
//! shared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use kube::{Resource, core::NamespaceResourceScope, core::object::HasSpec};
use serde::{Serialize, de::DeserializeOwned};

use crate::crd::{
    ConfigStatus, PoolBudget, RestartPolicy, RestartTarget, Rollout, RuntimeConfig, SecretKeyRef,
    Target,
};
use crate::document::{self, Effective, ResolvedSecret};
use crate::validation::{self, FieldError, SecretValues};

/// A hotconf custom resource: what the generic reconciler needs to know of a kind.
pub trait ConfigResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasSpec<Spec: Serialize>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind's name, as in `hotconf.dev/owner-kind`.
    const KIND: &'static str;
    /// Whether the kind reads Secrets (`valuesFrom`) and projects sensitive values.
    const USES_SECRETS: bool;
    /// `spec.target`.
    fn target(&self) -> Option<&Target>;
    /// `spec.revisionHistoryLimit`.
    fn history_limit(&self) -> Option<i32>;
    /// `spec.paused`.
    fn paused(&self) -> bool;
    /// `.status`.
    fn config_status(&self) -> Option<&ConfigStatus>;
    /// `.status`, to replace.
    fn status_mut(&mut self) -> &mut Option<ConfigStatus>;
    /// `spec.restartTargets`.
    fn restart_targets(&self) -> &[RestartTarget];
    /// `spec.restartPolicy`.
    fn restart_policy(&self) -> Option<&RestartPolicy>;
    /// `spec.rollout`.
    fn rollout(&self) -> Option<&Rollout>;
    /// The Secrets the spec reads (`valuesFrom`): document key and reference.
    fn secret_refs(&self) -> Vec<(String, SecretKeyRef)>;
    /// Every validation error; `secrets` is `None` offline.
    fn validate(&self, secrets: Option<&SecretValues>) -> Vec<FieldError>;
    /// The document paths whose change needs a restart of the consumers (valid spec or not).
    fn restart_keys(&self) -> BTreeSet<String>;
    /// The effective document of a valid spec.
    fn evaluate(&self, secrets: &BTreeMap<String, ResolvedSecret>, now: DateTime<Utc>)
    -> Effective;
}

// The spec fields both kinds share, read the same way.
macro_rules! shared_accessors {
    () => {
        fn target(&self) -> Option<&Target> {
            self.spec.target.as_ref()
        }
        fn history_limit(&self) -> Option<i32> {
            self.spec.revision_history_limit
        }
        fn paused(&self) -> bool {
            self.spec.paused
        }
        fn config_status(&self) -> Option<&ConfigStatus> {
            self.status.as_ref()
        }
        fn status_mut(&mut self) -> &mut Option<ConfigStatus> {
            &mut self.status
        }
        fn restart_targets(&self) -> &[RestartTarget] {
            &self.spec.restart_targets
        }
        fn restart_policy(&self) -> Option<&RestartPolicy> {
            self.spec.restart_policy.as_ref()
        }
        fn rollout(&self) -> Option<&Rollout> {
            self.spec.rollout.as_ref()
        }
    };
}

impl ConfigResource for RuntimeConfig {
    const KIND: &'static str = "RuntimeConfig";
    const USES_SECRETS: bool = true;

    shared_accessors!();
    fn secret_refs(&self) -> Vec<(String, SecretKeyRef)> {
        self.spec
            .values_from
            .iter()
            .map(|f| (f.key.clone(), f.secret_key_ref.clone()))
            .collect()
    }
    fn validate(&self, secrets: Option<&SecretValues>) -> Vec<FieldError> {
        validation::validate_runtime_config(&self.spec, secrets)
    }
    fn restart_keys(&self) -> BTreeSet<String> {
        document::runtime_config_restart_keys(&self.spec)
    }
    fn evaluate(
        &self,
        secrets: &BTreeMap<String, ResolvedSecret>,
        now: DateTime<Utc>,
    ) -> Effective {
        document::runtime_config(&self.spec, secrets, now)
    }
}

impl ConfigResource for PoolBudget {
    const KIND: &'static str = "PoolBudget";
    const USES_SECRETS: bool = false;

    shared_accessors!();
    fn secret_refs(&self) -> Vec<(String, SecretKeyRef)> {
        Vec::new()
    }
    fn validate(&self, _secrets: Option<&SecretValues>) -> Vec<FieldError> {
        validation::validate_pool_budget(&self.spec)
    }
    fn restart_keys(&self) -> BTreeSet<String> {
        document::pool_budget_restart_keys()
    }
    fn evaluate(
        &self,
        _secrets: &BTreeMap<String, ResolvedSecret>,
        _now: DateTime<Utc>,
    ) -> Effective {
        document::pool_budget(&self.spec)
    }
}
