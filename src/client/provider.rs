//! An OpenFeature provider over a [`Config`]: the `open-feature` crate's [`FeatureProvider`],
//! so an application that evaluates flags through the OpenFeature SDK reads hotconf's flags
//! (SPEC.md §3.1) from the document in memory, each evaluation as [`Config::resolve_flag`]
//! resolves it.
//!
//! ```no_run
//! # async fn demo(config: hotconf::client::Config) {
//! use open_feature::{EvaluationContext, OpenFeature};
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(hotconf::client::HotconfProvider::new(config)).await;
//! let client = api.create_client();
//! let ctx = EvaluationContext::default().with_targeting_key("user-42");
//! let flow = client.get_string_value("checkout_flow", Some(&ctx), None).await;
//! # let _ = flow; }
//! ```
//!
//! The targeting key is the subject; the reason, the variant and the hotconf revision (flag
//! metadata `revision`) come with every value. Errors: `FLAG_NOT_FOUND` for an unknown flag,
//! `TYPE_MISMATCH` when the value is not of the type asked for, `TARGETING_KEY_MISSING` when
//! the flag splits subjects and the context has no targeting key.
//!
//! Provider events: the `open-feature` crate (0.2 and 0.3) has no event API, so the provider
//! hands them out itself: [`HotconfProvider::events`] yields OpenFeature's
//! `PROVIDER_CONFIGURATION_CHANGED` for each new revision, with the flags whose definition
//! changed (`flagsChanged` in the specification's event details).

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    FlagMetadata, StructValue, async_trait,
};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::watch;

use super::{Config, Document};
use crate::feature_flags::Resolved;

/// The OpenFeature provider of a [`Config`].
pub struct HotconfProvider {
    config: Config,
    metadata: ProviderMetadata,
}

impl HotconfProvider {
    /// A provider reading `config`.
    pub fn new(config: Config) -> Self {
        HotconfProvider {
            config,
            metadata: ProviderMetadata::new("hotconf"),
        }
    }

    /// The provider's events from now on: one [`ProviderEvent`] per new document swapped in.
    /// Take the stream before handing the provider to the SDK (`set_provider` keeps it).
    pub fn events(&self) -> ProviderEvents {
        ProviderEvents {
            changes: self.config.changes(),
            config: self.config.clone(),
            last: self.config.snapshot(),
        }
    }

    fn resolve<T>(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let error = |code, message: String| {
            EvaluationError::builder()
                .code(code)
                .message(message)
                .build()
        };
        let subject = ctx.targeting_key.as_deref();
        let r = self.config.resolve_flag(flag, subject).ok_or_else(|| {
            error(
                EvaluationErrorCode::FlagNotFound,
                format!("flag {flag} is not in the configuration"),
            )
        })?;
        if r.unbucketed {
            return Err(error(
                EvaluationErrorCode::TargetingKeyMissing,
                format!("flag {flag} splits subjects: the context needs a targeting key"),
            ));
        }
        let value = convert(&r.value).ok_or_else(|| {
            error(
                EvaluationErrorCode::TypeMismatch,
                format!("flag {flag} is {}, not the type asked for", r.value),
            )
        })?;
        let reason = match r.reason {
            Resolved::Static => EvaluationReason::Static,
            Resolved::TargetingMatch => EvaluationReason::TargetingMatch,
            Resolved::Split => EvaluationReason::Split,
            Resolved::Disabled => EvaluationReason::Disabled,
            Resolved::Default => EvaluationReason::Default,
        };
        let mut metadata = FlagMetadata::default();
        if let Some(revision) = self.config.revision() {
            metadata = metadata.with_value("revision", revision);
        }
        Ok(ResolutionDetails {
            value,
            variant: Some(r.variant),
            reason: Some(reason),
            flag_metadata: Some(metadata),
        })
    }
}

/// An OpenFeature provider event (the specification's `PROVIDER_CONFIGURATION_CHANGED`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEvent {
    /// The revision now in use (when the source names it).
    pub revision: Option<i64>,
    /// The flags added, removed or redefined since the previous event, in name order; empty
    /// when only values or maintenance changed.
    pub flags_changed: Vec<String>,
}

/// The events of a [`HotconfProvider`], from [`HotconfProvider::events`].
pub struct ProviderEvents {
    changes: watch::Receiver<u64>,
    config: Config,
    last: Arc<Document>,
}

impl ProviderEvents {
    /// Waits for the next new document and describes it; `None` when the configuration is
    /// gone. Documents swapped in while nobody waited are described together.
    pub async fn next(&mut self) -> Option<ProviderEvent> {
        self.changes.changed().await.ok()?;
        let now = self.config.snapshot();
        let flags = |d: &Document| d.value()["featureFlags"].as_object().cloned();
        let (before, after) = (
            flags(&self.last).unwrap_or_default(),
            flags(&now).unwrap_or_default(),
        );
        let mut flags_changed: Vec<String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .cloned()
            .collect();
        flags_changed.sort();
        flags_changed.dedup();
        self.last = now;
        Some(ProviderEvent {
            revision: self.last.revision(),
            flags_changed,
        })
    }
}

#[async_trait]
impl FeatureProvider for HotconfProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(flag_key, ctx, Value::as_bool)
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(flag_key, ctx, Value::as_i64)
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(flag_key, ctx, Value::as_f64)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(flag_key, ctx, |v| v.as_str().map(str::to_string))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.resolve(flag_key, ctx, |v| match open_feature::Value::try_from(v) {
            Ok(open_feature::Value::Struct(s)) if v.is_object() => Some(s),
            _ => None,
        })
    }
}
