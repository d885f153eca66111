//! What the controller's caches hold of an object: its identity as metadata, and the rest of
//! the slimmed object as LZ4-compressed JSON, unpacked when a reconcile reads it. Both kinds are
//! kept so (slimmed by `feed::slim`), and the projected ConfigMaps' metadata (by
//! `feed::slim_projected`).
//!
//! Parsed, an object is mostly map nodes and small strings: one with 20 settings and 10 snapshots
//! (documents already left out) costs about 25 KiB of heap, and its JSON about 6 KiB. LZ4 rather
//! than deflate: over a cold start at 10,000 objects deflate's level 1 and inflate were a fifth
//! of the operator's CPU (every listed object is packed, and its first reconcile unpacks it),
//! and LZ4 takes a small part of that for somewhat larger packs (measured in the cluster bench's
//! memory rows). Unpacking costs microseconds, against the milliseconds of a reconcile's API
//! calls. What the watch mappers read of every object (which Secrets it reads, which pods it
//! selects) is kept beside, so that a Secret's change does not unpack every object.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use crate::crd::StoredDocument;
use crate::kinds::ConfigResource;

/// How a kind is kept in the cache.
pub(super) trait Pack:
    Resource<DynamicType = ()> + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// What the watch mappers read of every object without unpacking it.
    type Index: Clone + Send + Sync + 'static;
    /// Slims the object for the cache (what is left must serialize) and returns its index.
    fn prepare(&mut self) -> Self::Index;
    /// Puts back, after parsing, what serialization could not carry.
    fn restore(&mut self) {}
}

/// What the watch mappers read of a custom resource.
#[derive(Clone)]
pub(super) struct Refs {
    /// The names of the Secrets the spec reads (`valuesFrom`).
    pub(super) secrets: Arc<[String]>,
    /// `spec.rollout.consumerSelector`.
    pub(super) consumer_selector: Option<Arc<BTreeMap<String, String>>>,
}

impl<K: ConfigResource> Pack for K {
    type Index = Refs;

    fn prepare(&mut self) -> Refs {
        super::feed::slim(self);
        // The snapshot documents, the bulk of an object, are left out: a reconcile that writes
        // reads the object whole, and one that projects the current spec has its document from
        // the spec. A document left out cannot be serialized (so that it is never written):
        // packed as `null`, it is left out again by `restore`.
        set_documents(self, StoredDocument::default);
        Refs {
            secrets: self
                .secret_refs()
                .into_iter()
                .map(|(_, r)| r.name)
                .collect(),
            consumer_selector: self
                .rollout()
                .and_then(|r| r.consumer_selector.clone())
                .map(Arc::new),
        }
    }

    fn restore(&mut self) {
        set_documents(self, StoredDocument::elided);
    }
}

// Replaces every snapshot document of `obj`.
pub(super) fn set_documents<K: ConfigResource>(obj: &mut K, document: fn() -> StoredDocument) {
    if let Some(status) = obj.status_mut() {
        for snapshot in &mut status.history {
            snapshot.document = document();
        }
    }
}

impl Pack for PartialObjectMeta<ConfigMap> {
    type Index = ();

    fn prepare(&mut self) {
        super::feed::slim_projected(self);
    }
}

/// A cached `T`: see the module's documentation.
pub(super) struct Cached<T: Pack> {
    // Only what the controller's own machinery reads without unpacking: the store's key, the
    // names in logs and backoff.
    meta: ObjectMeta,
    packed: Arc<[u8]>,
    /// What the watch mappers read.
    pub(super) index: T::Index,
}

impl<T: Pack> Cached<T> {
    /// What the cache keeps of `obj`: slimmed, then packed.
    pub(super) fn new(mut obj: T) -> Self {
        let index = obj.prepare();
        let json = serde_json::to_vec(&obj).expect("a prepared object serializes");
        let m = obj.meta();
        let meta = ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            generation: m.generation,
            ..ObjectMeta::default()
        };
        Cached {
            meta,
            packed: lz4_flex::block::compress_prepend_size(&json).into(),
            index,
        }
    }

    /// The object as [`Cached::new`] was given it, less what slimming drops.
    pub(super) fn unpack(&self) -> T {
        let json = lz4_flex::block::decompress_size_prepended(&self.packed)
            .expect("the cache unpacks what it packed");
        let mut obj: T =
            serde_json::from_slice(&json).expect("the cache parses the JSON it wrote of a T");
        obj.restore();
        obj
    }
}

impl<T: Pack> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Cached {
            meta: self.meta.clone(),
            packed: self.packed.clone(),
            index: self.index.clone(),
        }
    }
}

impl<T: Pack> std::fmt::Debug for Cached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("kind", &T::kind(&()))
            .field("meta", &self.meta)
            .field("packed_bytes", &self.packed.len())
            .finish()
    }
}

impl<T: Pack> Resource for Cached<T> {
    type DynamicType = ();
    type Scope = T::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        T::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        T::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        T::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        T::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// A watch event of `T` as the cache's.
pub(super) fn event<T: Pack>(event: watcher::Event<T>) -> watcher::Event<Cached<T>> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(Cached::new(obj)),
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(Cached::new(obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(Cached::new(obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

// The controller asks for it; the cache is fed from watches of `T` (see `feed`).
impl<'de, T: Pack> Deserialize<'de> for Cached<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Cached::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PoolBudget, RuntimeConfig};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt as _;
    use kube::api::PartialObjectMeta;

    const RUNTIME_CONFIG: &str = r#"
apiVersion: hotconf.dev/v1alpha1
kind: RuntimeConfig
metadata:
  name: checkout
  namespace: shop
  uid: 6a1f
  resourceVersion: "42"
  generation: 3
  labels: {team: payments}
  annotations: {hotconf.dev/change-reason: "raise the pool", hotconf.dev/rollback-to: "2"}
  managedFields:
  - manager: kubectl
    operation: Apply
    apiVersion: hotconf.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1: {"f:metadata": {"f:annotations": {"f:hotconf.dev/change-reason": {}}}, "f:spec": {"f:values": {"f:pool": {}}}}
spec:
  schema:
    pool: {type: integer, minimum: 1, maximum: 64, default: 8, requiresRestart: true}
    mode: {type: string, enum: [FAST, SAFE], default: SAFE, description: how}
    token: {type: string, sensitive: true, pattern: "^[a-z]+$", maxLength: 12}
  values: {pool: 16, mode: FAST}
  valuesFrom:
  - key: token
    secretKeyRef: {name: checkout-token, key: token}
  featureFlags:
    new-cart:
      enabled: true
      variants: {on: true, off: false}
      defaultVariant: "off"
      fractional: {on: 30, off: 70}
      targets: {on: [alice]}
  maintenance: {enabled: false, reason: ""}
  target: {configMapName: checkout-config, format: yaml, fileName: app.yaml}
  revisionHistoryLimit: 5
  rollout:
    consumerSelector: {app: checkout}
    autoRollback: {enabled: true, maxFailures: "20%"}
status:
  observedGeneration: 3
  currentRevision: 2
  currentHash: abc
  latestRevision: 2
  projected: {configMap: checkout-config, secret: checkout-config-sensitive}
  history:
  - {revision: 1, hash: h1, createdAt: "2026-12-01T00:00:00Z", generation: 1, changedBy: alice, document: {pool: 8}}
  - {revision: 2, hash: h2, createdAt: "2026-12-02T00:00:00Z", generation: 3, changedKeys: [pool], document: {pool: 16}, appliedBy: 3, appliedByAll: true}
  rollback: {targetRevision: 2, pinnedGeneration: 3, requested: "2"}
"#;

    // What the cache should give back of `obj`: slimmed, without its documents.
    fn slimmed<K: ConfigResource>(mut obj: K) -> K {
        super::super::feed::slim(&mut obj);
        set_documents(&mut obj, StoredDocument::elided);
        obj
    }

    #[test]
    fn an_object_unpacks_as_it_was_slimmed_and_its_mappers_read_it_packed() {
        let obj: RuntimeConfig = serde_yaml::from_str(RUNTIME_CONFIG).unwrap();
        let cached = Cached::new(obj.clone());
        let back = cached.unpack();
        let want = slimmed(obj);
        // Snapshot documents compare as text; elided on both sides.
        assert_eq!(format!("{back:?}"), format!("{want:?}"));
        let history = &back.status.as_ref().unwrap().history;
        assert!(history.iter().all(|s| s.document.is_elided()));
        assert_eq!(history[1].applied_by, Some(3));
        assert_eq!(back.spec.values["pool"], 16);
        assert_eq!(back.spec.feature_flags["new-cart"].fractional["on"], 30);
        // The annotations and managedFields a reconcile reads survive.
        assert_eq!(back.annotations()["hotconf.dev/rollback-to"], "2");
        assert!(crate::reconcile::sets_spec(&back.managed_fields()[0]));
        // The reason's owner too: it is the spec's, so the reason is this change's, although
        // an earlier revision recorded it already.
        let earlier = crate::crd::Snapshot {
            reason: Some("raise the pool".into()),
            ..Default::default()
        };
        assert_eq!(
            crate::reconcile::change_reason(&back, &[earlier]).as_deref(),
            Some("raise the pool")
        );

        assert_eq!(&*cached.index.secrets, ["checkout-token".to_string()]);
        assert_eq!(
            cached.index.consumer_selector.as_deref().unwrap()["app"],
            "checkout"
        );
        assert_eq!(cached.name_any(), "checkout");
        assert_eq!(cached.namespace().as_deref(), Some("shop"));
        assert_eq!(cached.uid().as_deref(), Some("6a1f"));
        assert!(
            cached.labels().is_empty() && cached.annotations().is_empty(),
            "only the identity is kept beside"
        );
        assert_eq!(back.labels()["team"], "payments");
    }

    #[test]
    fn a_configmaps_metadata_unpacks_without_field_sets() {
        let cm: PartialObjectMeta<ConfigMap> = serde_yaml::from_str(
            r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: checkout-config
  namespace: shop
  uid: 9f
  labels: {app.kubernetes.io/managed-by: hotconf}
  annotations: {hotconf.dev/revision: "2", hotconf.dev/data-hash: d1, kubectl.kubernetes.io/last-applied-configuration: "{}"}
  ownerReferences: [{apiVersion: hotconf.dev/v1alpha1, kind: RuntimeConfig, name: checkout, uid: 6a1f, controller: true}]
  managedFields:
  - {manager: hotconf, operation: Apply, apiVersion: v1, fieldsType: FieldsV1, fieldsV1: {"f:data": {}}}
"#,
        )
        .unwrap();
        let back = Cached::new(cm).unpack().metadata;
        assert_eq!(back.annotations.as_ref().unwrap().len(), 2);
        assert_eq!(back.annotations.unwrap()["hotconf.dev/data-hash"], "d1");
        assert_eq!(back.owner_references.unwrap()[0].uid, "6a1f");
        let fields = back.managed_fields.unwrap();
        assert_eq!(fields[0].manager.as_deref(), Some("hotconf"));
        assert!(fields[0].fields_v1.is_none());
    }

    #[test]
    fn a_pool_budget_unpacks_too() {
        let obj: PoolBudget =
            serde_yaml::from_str(include_str!("../../examples/pool-budget.yaml")).unwrap();
        let cached = Cached::new(obj.clone());
        assert_eq!(
            format!("{:?}", cached.unpack()),
            format!("{:?}", slimmed(obj))
        );
        assert!(cached.index.secrets.is_empty() && cached.index.consumer_selector.is_none());
    }
}
