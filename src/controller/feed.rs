//! The watch → cache feed: what `reflect` does, plus readiness, slimming, and telling the echoes
//! of our own writes (status, projected objects) from changes by anyone else.

use super::*;

/// Annotation kubectl's client-side apply keeps the whole applied object in.
pub(super) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

// Feeds the cache from the watch (what `reflect` does, plus readiness and slimming) and tells the
// watch events of our own status writes from changes by anyone else: an update that changes
// nothing but the status, written by `hotconf` alone, needs no reconcile. Listings (start-up, a
// watch that re-lists) and deletions always pass.
pub(super) struct CacheFeed<K: ConfigResource> {
    pub(super) writer: reflector::store::Writer<Cached<K>>,
    pub(super) synced: watch::Sender<bool>,
    pub(super) ctx: Arc<Context>,
    // uid → (fingerprint, the status fields `hotconf` owned) as last seen
    pub(super) seen: HashMap<String, (u64, Option<u64>)>,
    // How far the first listing is (see `CacheFeed::new`).
    first: First,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum First {
    NotStarted,
    Listing,
    Done,
}

impl<K: ConfigResource> CacheFeed<K> {
    // The store is ready from the start, and the first listing's objects go straight into it:
    // the controller (which waits for its store to be ready) reconciles each object as it
    // arrives, not after the whole listing. A reconcile reads only its own object. A listing
    // after that (a watch that lists again) is applied whole, as `reflect` does, so that objects
    // deleted meanwhile leave the cache; so is the first one, if it fails and starts over.
    pub(super) fn new(
        mut writer: reflector::store::Writer<Cached<K>>,
        synced: watch::Sender<bool>,
        ctx: Arc<Context>,
    ) -> Self {
        writer.apply_watcher_event(&watcher::Event::InitDone);
        CacheFeed {
            writer,
            synced,
            ctx,
            seen: HashMap::new(),
            first: First::NotStarted,
        }
    }

    pub(super) fn feed(
        &mut self,
        event: watcher::Result<watcher::Event<K>>,
    ) -> Option<watcher::Result<watcher::Event<Cached<K>>>> {
        let event = match event {
            Ok(event) => event,
            Err(e) => return Some(Err(e)),
        };
        let echo = self.is_echo(&event);
        self.forget_written(&event);
        let event = cached::event(event);
        match (&event, self.first) {
            (watcher::Event::Init, First::NotStarted) => self.first = First::Listing,
            (watcher::Event::InitApply(obj), First::Listing) => {
                self.writer
                    .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
            }
            (watcher::Event::InitDone, First::Listing) => self.first = First::Done,
            (watcher::Event::Init, First::Listing) => {
                // The first listing failed and starts over: this one is applied whole.
                self.first = First::Done;
                self.writer.apply_watcher_event(&event);
            }
            _ => self.writer.apply_watcher_event(&event),
        }
        if let watcher::Event::InitDone = event {
            self.synced.send_replace(true);
        }
        (!echo).then_some(Ok(event))
    }

    // A status we wrote is kept only until the cache has moved past the version it was based
    // on (or the object is gone): after that, reconciles read it from the cache. Without this,
    // every object the operator ever wrote would keep a second copy of its status, since the
    // echo of our own write triggers no reconcile that could drop it.
    fn forget_written(&self, event: &watcher::Event<K>) {
        let (obj, deleted) = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => (obj, false),
            watcher::Event::Delete(obj) => (obj, true),
            _ => return,
        };
        let Some(uid) = obj.uid() else { return };
        // Gone from this watch, or listed again after it broke off (it may have been away):
        // its cached status is trusted again only after our next status write.
        if deleted || matches!(event, watcher::Event::InitApply(_)) {
            self.ctx.distrust(&uid);
        }
        let mut written = self.ctx.written.lock().expect("lock");
        if written.get(&uid).is_some_and(|(based_on, _)| {
            deleted || obj.resource_version().as_ref() != Some(based_on)
        }) {
            written.remove(&uid);
        }
    }

    fn is_echo(&mut self, event: &watcher::Event<K>) -> bool {
        let (watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event else {
            if let watcher::Event::Delete(obj) = event
                && let Some(uid) = obj.uid()
            {
                self.seen.remove(&uid);
            }
            return false;
        };
        let Some(uid) = obj.uid() else { return false };
        let fingerprint = fingerprint(obj);
        let status = Ownership::of(obj.meta(), Some("status"));
        let Some((was, ours)) = self.seen.insert(uid.clone(), (fingerprint, status.ours)) else {
            return false;
        };
        if matches!(event, watcher::Event::InitApply(_)) || was != fingerprint {
            return false;
        }
        status.written_by_us_since(ours)
            || self
                .ctx
                .written
                .lock()
                .expect("lock")
                .get(&uid)
                .is_some_and(|(_, status)| obj.config_status() == Some(status))
    }
}

// What the cache keeps of an object: everything a reconcile that writes nothing reads. Of
// managedFields that is, per `reconcile::changed_by`, which manager touched `spec` last,
// outside subresources, and, per `reconcile::rollback_requester` and
// `reconcile::change_reason`, which ones own the rollback and change-reason annotations. (The
// snapshot documents are left out when the object is packed: see `cached`.)
pub(super) fn slim<K: ConfigResource>(obj: &mut K) {
    let meta = obj.meta_mut();
    if let Some(entries) = meta.managed_fields.as_mut() {
        let owned = [
            crate::crd::names::ROLLBACK_TO,
            crate::crd::names::CHANGE_REASON,
        ];
        entries.retain_mut(|m| {
            let spec = crate::reconcile::sets_spec(m);
            let owns: Vec<&str> = owned
                .into_iter()
                .filter(|name| crate::reconcile::owns_annotation(m, name))
                .collect();
            // What the readers need to say yes again, and no more.
            let mut kept = json!({});
            if spec {
                kept["f:spec"] = json!({"f:set": {}});
            }
            for name in &owns {
                kept["f:metadata"]["f:annotations"][format!("f:{name}")] = json!({});
            }
            m.fields_v1 = Some(FieldsV1(kept));
            spec || !owns.is_empty()
        });
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

// Everything but the status that a reconcile depends on: the spec (through `generation`, which
// the API server moves on every spec change), annotations and the rest of the identity.
pub(super) fn fingerprint<K: ConfigResource>(obj: &K) -> u64 {
    let meta = obj.meta();
    let mut h = DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    meta.finalizers.hash(&mut h);
    for o in meta.owner_references.iter().flatten() {
        (&o.uid, o.controller).hash(&mut h);
    }
    h.finish()
}

// What the cache keeps of a projected ConfigMap's metadata: who wrote it, not the field sets
// (the bulk of managedFields) nor kubectl's copy of a client-side apply.
pub(super) fn slim_projected(cm: &mut PartialObjectMeta<ConfigMap>) {
    for m in cm.metadata.managed_fields.iter_mut().flatten() {
        m.fields_v1 = None;
    }
    if let Some(annotations) = cm.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

// Whether `hotconf`, by server-side apply, is the only writer of an object: then it holds
// exactly what `hotconf` applied last.
pub(super) fn written_by_us_alone(meta: &kube::api::ObjectMeta) -> bool {
    Ownership::of(meta, None).alone
}

// Who writes a part of an object (its status, or all of it), from its managedFields.
pub(super) struct Ownership {
    // A digest of the fields `hotconf` owns there by Apply, if any.
    ours: Option<u64>,
    // Whether `hotconf` is the only manager there.
    alone: bool,
}

impl Ownership {
    // Status entries are those of the status subresource, or (servers before 1.22 do not record
    // subresources) those that hold `f:status`.
    fn of(meta: &kube::api::ObjectMeta, part: Option<&str>) -> Self {
        let entries: Vec<_> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| match part {
                None => true,
                Some(part) => {
                    m.subresource.as_deref() == Some(part)
                        || m.fields_v1
                            .as_ref()
                            .is_some_and(|f| f.0.get(format!("f:{part}")).is_some())
                }
            })
            .collect();
        let is_ours = |m: &ManagedFieldsEntry| {
            m.manager.as_deref() == Some(MANAGER) && m.operation.as_deref() == Some("Apply")
        };
        let ours = entries.iter().find(|m| is_ours(m)).map(|m| {
            let fields = m.fields_v1.as_ref().map(|f| &f.0);
            let fields = match part {
                Some(part) => fields.map(|f| f.get(format!("f:{part}")).unwrap_or(f)),
                None => fields,
            };
            let mut h = DefaultHasher::new();
            fields.map(ToString::to_string).hash(&mut h);
            h.finish()
        });
        Ownership {
            ours,
            alone: entries.len() == 1 && ours.is_some(),
        }
    }

    // Whether the last change came from `hotconf`, given what it owned before (`None`: nothing).
    // Anyone else's write adds their own entry, or takes fields from ours.
    fn written_by_us_since(&self, before: Option<u64>) -> bool {
        self.alone && (before.is_none() || before == self.ours)
    }
}

// Changes of projected objects (from a watch of their metadata), less the echoes of our own
// writes. Listings and deletions always pass.
pub(super) fn projected_changes<C>(
    events: impl Stream<Item = watcher::Result<watcher::Event<PartialObjectMeta<C>>>> + Send + 'static,
) -> impl Stream<Item = watcher::Result<PartialObjectMeta<C>>> + Send + 'static
where
    C: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C::DynamicType: Default,
{
    // uid → the fields `hotconf` owned, as last seen
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    events
        .filter(move |event| {
            let echo = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let now = Ownership::of(&o.metadata, None);
                    let before = o.uid().and_then(|uid| seen.insert(uid, now.ours));
                    matches!(event, Ok(watcher::Event::Apply(_)))
                        && now.written_by_us_since(before.flatten())
                }
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(uid) = o.uid() {
                        seen.remove(&uid);
                    }
                    false
                }
                _ => false,
            };
            std::future::ready(!echo)
        })
        .touched_objects()
}

pub(super) fn namespace_of(url: &str) -> Option<String> {
    let mut parts = url.split('/');
    parts.by_ref().find(|p| *p == "namespaces")?;
    parts.next().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RuntimeConfig;
    use futures::FutureExt as _;

    fn object(rv: &str, revision: i64) -> RuntimeConfig {
        let mut obj: RuntimeConfig = serde_yaml::from_str(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a, namespace: n, uid: u1}\nspec: {}\n",
        )
        .unwrap();
        obj.metadata.resource_version = Some(rv.into());
        obj.status = Some(ConfigStatus {
            current_revision: Some(revision),
            ..Default::default()
        });
        obj
    }

    fn context() -> Arc<Context> {
        context_led_by(watch::channel(true).1)
    }

    fn context_led_by(is_leader: watch::Receiver<bool>) -> Arc<Context> {
        // Nothing here talks to the server: the client only has to exist.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let metrics = Arc::new(OperatorMetrics::register(&mut Default::default()));
        Context::new(client, metrics, is_leader)
    }

    fn named(name: &str, uid: &str) -> RuntimeConfig {
        let mut obj = object("1", 1);
        obj.metadata.name = Some(name.into());
        obj.metadata.uid = Some(uid.into());
        obj
    }

    #[tokio::test]
    async fn the_first_listing_is_reconcilable_as_it_arrives_and_a_relisting_is_applied_whole() {
        let (reader, writer) = reflector::store::<Cached<RuntimeConfig>>();
        let (synced, synced_rx) = watch::channel(false);
        let mut feed = CacheFeed::new(writer, synced, context());
        // Ready at once (the controller starts reconciling), though nothing is listed yet.
        assert!(reader.wait_until_ready().now_or_never().is_some());
        let get = |name: &str| reader.get(&ObjectRef::new(name).within("n"));
        let passed = |e: Option<watcher::Result<watcher::Event<Cached<RuntimeConfig>>>>| {
            matches!(e, Some(Ok(watcher::Event::InitApply(_))))
        };

        feed.feed(Ok(watcher::Event::Init));
        assert!(passed(
            feed.feed(Ok(watcher::Event::InitApply(named("a", "ua"))))
        ));
        assert!(get("a").is_some(), "in the store before the listing ends");
        assert!(!*synced_rx.borrow(), "but not synced");
        feed.feed(Ok(watcher::Event::InitApply(named("b", "ub"))));
        feed.feed(Ok(watcher::Event::InitDone));
        assert!(*synced_rx.borrow());
        assert!(
            get("a").is_some() && get("b").is_some(),
            "the end keeps both"
        );

        // A later listing, without `a` (deleted meanwhile): applied whole at its end.
        feed.feed(Ok(watcher::Event::Init));
        feed.feed(Ok(watcher::Event::InitApply(named("b", "ub"))));
        assert!(get("a").is_some(), "the old state until the listing ends");
        feed.feed(Ok(watcher::Event::InitDone));
        assert!(get("a").is_none() && get("b").is_some());
    }

    #[tokio::test]
    async fn a_first_listing_that_starts_over_is_applied_whole() {
        let (reader, writer) = reflector::store::<Cached<RuntimeConfig>>();
        let mut feed = CacheFeed::new(writer, watch::channel(false).0, context());
        let get = |name: &str| reader.get(&ObjectRef::new(name).within("n"));
        feed.feed(Ok(watcher::Event::Init));
        feed.feed(Ok(watcher::Event::InitApply(named("a", "ua"))));
        // The listing failed; the next one has no `a`.
        feed.feed(Ok(watcher::Event::Init));
        feed.feed(Ok(watcher::Event::InitApply(named("b", "ub"))));
        feed.feed(Ok(watcher::Event::InitDone));
        assert!(get("a").is_none() && get("b").is_some());
    }

    #[tokio::test]
    async fn a_cached_status_is_trusted_from_our_write_within_one_term() {
        let ctx = context();
        let (_, writer) = reflector::store::<Cached<RuntimeConfig>>();
        let mut feed = CacheFeed::new(writer, watch::channel(false).0, ctx.clone());
        assert!(!ctx.trusts(&object("7", 1)), "nothing written yet");

        // Our status write made version 7: the cache at 7 or later has it, before 7 not yet.
        ctx.trust("u1", ctx.current_term(), Some("7"));
        assert!(ctx.trusts(&object("7", 1)) && ctx.trusts(&object("12", 1)));
        assert!(!ctx.trusts(&object("6", 1)));
        assert!(
            !ctx.trusts(&object("x7", 1)),
            "a version that is no integer"
        );

        // A listing (the watch broke off) or a deletion ends it.
        feed.feed(Ok(watcher::Event::InitApply(object("8", 1))));
        assert!(!ctx.trusts(&object("8", 1)));
        ctx.trust("u1", ctx.current_term(), Some("8"));
        feed.feed(Ok(watcher::Event::Delete(object("8", 1))));
        assert!(!ctx.trusts(&object("8", 1)));

        // So does a change of leadership, even for a write that began before it.
        let term = ctx.current_term();
        ctx.trust("u1", term, Some("9"));
        ctx.new_term();
        assert!(!ctx.trusts(&object("9", 1)));
        ctx.trust("u1", term, Some("10"));
        assert!(!ctx.trusts(&object("10", 1)), "written in the term before");
        ctx.trust("u1", ctx.current_term(), Some("10"));
        assert!(ctx.trusts(&object("10", 1)));
    }

    #[tokio::test]
    async fn losing_the_lease_ends_the_term() {
        let (leading, is_leader) = watch::channel(true);
        let ctx = context_led_by(is_leader);
        ctx.trust("u1", ctx.current_term(), Some("7"));
        assert!(ctx.trusts(&object("7", 1)));
        leading.send(false).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while ctx.trusts(&object("7", 1)) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the term to end");
        assert_eq!(ctx.current_term(), 1);
    }

    #[tokio::test]
    async fn a_written_status_is_forgotten_once_the_cache_moves_past_it() {
        let ctx = context();
        let (_, writer) = reflector::store::<Cached<RuntimeConfig>>();
        let mut feed = CacheFeed::new(writer, watch::channel(false).0, ctx.clone());
        let wrote = |ctx: &Context, rv: &str| {
            let status = object(rv, 2).status.unwrap();
            ctx.written
                .lock()
                .unwrap()
                .insert("u1".into(), (rv.into(), status));
        };
        let held = |ctx: &Context| ctx.written.lock().unwrap().contains_key("u1");

        // Written on top of version 5: an event still at 5 keeps it, the echo (6) drops it.
        feed.feed(Ok(watcher::Event::InitApply(object("5", 1))));
        wrote(&ctx, "5");
        feed.feed(Ok(watcher::Event::Apply(object("5", 1))));
        assert!(held(&ctx));
        let echo = feed.feed(Ok(watcher::Event::Apply(object("6", 2))));
        assert!(!held(&ctx), "the echo of the write releases it");
        assert!(echo.is_none(), "and triggers no reconcile");

        // A deletion drops it too.
        wrote(&ctx, "6");
        feed.feed(Ok(watcher::Event::Delete(object("6", 2))));
        assert!(!held(&ctx));
    }
}
