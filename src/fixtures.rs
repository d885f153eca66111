//! Builders for the unit tests: `RuntimeConfig::test().with_value("a", 1)`,
//! `Parameter::test(ParamType::Integer).with_default(4)`, `Observed::test()`, ... so that a test
//! says what matters about its object and nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::crd::{
    AutoRollback, FeatureFlag, Maintenance, ParamType, Parameter, PoolBudget, PoolBudgetSpec,
    RestartTarget, Rollout, RuntimeConfig, RuntimeConfigSpec, SecretKeyRef, Target, ValueFrom,
    WorkloadKind,
};
use crate::reconcile::Observed;
use crate::rollout::{Consumer, Workload};

/// The time every fixture starts at (any fixed instant will do; tests move it explicitly).
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn test_meta(name: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ns".into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        ..Default::default()
    }
}

impl RuntimeConfigSpec {
    /// Declares `schema.<key>`.
    pub fn with_param(mut self, key: &str, param: Parameter) -> Self {
        self.schema.insert(key.into(), param);
        self
    }

    /// Sets `values.<key>`.
    pub fn with_value(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// Reads `values.<key>` from key `secret_key` of Secret `secret`.
    pub fn with_secret(mut self, key: &str, secret: &str, secret_key: &str) -> Self {
        self.values_from.push(ValueFrom {
            key: key.into(),
            secret_key_ref: SecretKeyRef {
                name: secret.into(),
                key: secret_key.into(),
            },
        });
        self
    }

    /// Adds flag `name`.
    pub fn with_flag(mut self, name: &str, flag: FeatureFlag) -> Self {
        self.feature_flags.insert(name.into(), flag);
        self
    }

    /// Maintenance on (reason `upgrade`) until `until`.
    pub fn with_until(mut self, until: &str) -> Self {
        self.maintenance = Some(Maintenance {
            enabled: true,
            reason: "upgrade".into(),
            until: Some(until.into()),
        });
        self
    }

    /// `target`.
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// `revisionHistoryLimit`.
    pub fn with_history_limit(mut self, limit: i32) -> Self {
        self.revision_history_limit = Some(limit);
        self
    }
}

impl RuntimeConfig {
    /// `ns/app`, generation 1, an empty spec.
    pub fn test() -> Self {
        let mut obj = RuntimeConfig::new("app", RuntimeConfigSpec::default());
        obj.metadata = test_meta("app");
        obj
    }

    /// Changes the spec with `f` (the generation stays: see [`RuntimeConfig::next_generation`]).
    pub fn with_spec(mut self, f: impl FnOnce(RuntimeConfigSpec) -> RuntimeConfigSpec) -> Self {
        self.spec = f(self.spec);
        self
    }

    /// Sets `spec.values.<key>`.
    pub fn with_value(self, key: &str, value: impl Into<Value>) -> Self {
        self.with_spec(|s| s.with_value(key, value))
    }

    /// Declares `spec.schema.<key>`.
    pub fn with_param(self, key: &str, param: Parameter) -> Self {
        self.with_spec(|s| s.with_param(key, param))
    }

    /// Restarts Deployment `name` for restart-only keys.
    pub fn with_restart_target(mut self, name: &str) -> Self {
        self.spec.restart_targets.push(RestartTarget {
            kind: WorkloadKind::Deployment,
            name: Some(name.into()),
            selector: None,
        });
        self
    }

    /// Tracks the pods labelled `app=<app>` and rolls back automatically after `max_failures`.
    pub fn with_auto_rollback(mut self, app: &str, max_failures: i64) -> Self {
        self.spec.rollout = Some(Rollout {
            consumer_selector: Some(BTreeMap::from([("app".into(), app.into())])),
            auto_rollback: Some(AutoRollback {
                enabled: true,
                max_failures: Some(max_failures.into()),
                progress_deadline_seconds: None,
            }),
            health_window_seconds: None,
        });
        self
    }

    /// Projects into ConfigMap `name`.
    pub fn with_config_map(self, name: &str) -> Self {
        self.with_spec(|s| {
            s.with_target(Target {
                config_map_name: Some(name.into()),
                ..Default::default()
            })
        })
    }

    /// `spec.revisionHistoryLimit`.
    pub fn with_history_limit(self, limit: i32) -> Self {
        self.with_spec(|s| s.with_history_limit(limit))
    }

    /// `spec.paused`.
    pub fn paused(mut self) -> Self {
        self.spec.paused = true;
        self
    }

    /// Sets (`Some`) or removes (`None`) an annotation.
    pub fn with_annotation(mut self, key: &str, value: Option<&str>) -> Self {
        let annotations = self.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => annotations.insert(key.into(), v.into()),
            None => annotations.remove(key),
        };
        self
    }

    /// The spec changed: the API server moves `generation` on.
    pub fn next_generation(mut self) -> Self {
        self.metadata.generation = Some(self.metadata.generation.unwrap_or(0) + 1);
        self
    }
}

impl PoolBudget {
    /// `ns/pools`, generation 1, an empty spec.
    pub fn test() -> Self {
        let mut obj = PoolBudget::new("pools", PoolBudgetSpec::default());
        obj.metadata = test_meta("pools");
        obj
    }
}

impl Parameter {
    /// A parameter of `type_` with nothing else declared.
    pub fn test(type_: ParamType) -> Self {
        Parameter {
            type_,
            default: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            enum_: None,
            requires_restart: false,
            sensitive: false,
            description: None,
        }
    }

    /// `default`.
    pub fn with_default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// `requiresRestart: true`.
    pub fn restart_only(mut self) -> Self {
        self.requires_restart = true;
        self
    }

    /// `sensitive: true`.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// `minimum`.
    pub fn min(mut self, bound: Value) -> Self {
        self.minimum = Some(bound);
        self
    }

    /// `maximum`.
    pub fn max(mut self, bound: Value) -> Self {
        self.maximum = Some(bound);
        self
    }

    /// `minLength`.
    pub fn min_len(mut self, length: i64) -> Self {
        self.min_length = Some(length);
        self
    }

    /// `maxLength`.
    pub fn max_len(mut self, length: i64) -> Self {
        self.max_length = Some(length);
        self
    }

    /// `pattern`.
    pub fn pattern(mut self, pattern: &str) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// `enum`, from a JSON list.
    pub fn one_of(mut self, entries: Value) -> Self {
        self.enum_ = Some(entries.as_array().expect("enum entries are a list").clone());
        self
    }
}

impl FeatureFlag {
    /// An enabled flag for everyone.
    pub fn test() -> Self {
        FeatureFlag {
            enabled: true,
            ..Default::default()
        }
    }
}

impl Observed {
    /// Nothing observed yet, at [`epoch`].
    pub fn test() -> Self {
        Observed {
            now: epoch(),
            ..Default::default()
        }
    }

    /// Deployment `name` of one replica as its controller reports it: its template stamped for
    /// `revision` (`None`: never stamped), and its rollout finished.
    pub fn with_workload(mut self, name: &str, revision: Option<i64>) -> Self {
        self.workloads.retain(|w| w.name != name);
        self.workloads.push(Workload::test(name, revision));
        self
    }

    /// Consumer `pod` applied `revision` (and reports `error` about `failed`, if given).
    pub fn with_consumer(mut self, pod: &str, revision: Option<i64>, failed: Option<i64>) -> Self {
        self.consumers.get_or_insert_default().push(Consumer {
            pod: pod.into(),
            revision,
            error: failed.map(|r| format!("revision {r} refused")),
            failed_revision: failed,
            ..Consumer::default()
        });
        self
    }
}

impl Workload {
    /// Deployment `name` of one replica, stamped for `revision`, its rollout finished.
    pub fn test(name: &str, revision: Option<i64>) -> Workload {
        let generation = 10 + revision.unwrap_or(0);
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            generation,
            observed_generation: generation,
            restart_revision: revision,
            counts: crate::rollout::RolloutCounts {
                desired: 1,
                current: 1,
                updated: 1,
                available: 1,
                revisions_match: true,
                ..Default::default()
            },
        }
    }
}
