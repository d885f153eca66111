//! Core speed, no cluster: what one reconcile spends in the pure pipeline per object —
//! validation, the effective document and its SHA-256 — for a RuntimeConfig with 200 declared
//! keys and for a PoolBudget with every field set; and the whole reconcile decision
//! (`reconcile::plan`) for a converged RuntimeConfig with 10 snapshots of history, which is what
//! every object costs at an operator restart.
//!
//! `make bench` runs it with `cargo bench --bench core`; `benches/cluster.rs` reads criterion's
//! estimates back into the report.

mod fixtures;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hotconf::document;
use hotconf::kinds::ConfigResource;
use hotconf::reconcile::{self, Observed};
use hotconf::validation::SecretValues;

/// Validate, evaluate and hash one object, as a reconcile does.
fn pipeline<K: ConfigResource>(obj: &K) -> String {
    let errors = obj.validate(Some(&SecretValues::new()));
    assert!(errors.is_empty(), "the fixture is valid: {errors:?}");
    let effective = obj.evaluate(&BTreeMap::new(), chrono::Utc::now());
    document::hash(&effective.document)
}

/// A RuntimeConfig with `keys` keys that has been through `history` revisions, with the status and
/// ConfigMap the operator wrote for it: the input of a reconcile that finds nothing to do.
fn converged(keys: usize, history: u64) -> (hotconf::crd::RuntimeConfig, Observed) {
    let mut obj = fixtures::runtime_config("bench", keys, 1);
    obj.metadata.namespace = Some("bench".into());
    obj.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    obj.metadata.generation = Some(1);
    let mut observed = Observed {
        now: chrono::Utc::now() - chrono::Duration::hours(1),
        ..Default::default()
    };
    for version in 1..=history {
        obj.spec = fixtures::runtime_config_spec(keys, version);
        observed.now += chrono::Duration::minutes(1);
        let plan = reconcile::plan(&obj, &observed);
        obj.status = Some(plan.status);
        if let Some(cm) = plan.config_map {
            observed.config_map = Some(cm);
        }
    }
    observed.now = chrono::Utc::now();
    let plan = reconcile::plan(&obj, &observed);
    assert!(
        !plan.status_changed && plan.config_map.is_none(),
        "the seeded object is converged"
    );
    (obj, observed)
}

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    let rtc = fixtures::runtime_config("bench", 200, 1);
    group.bench_function("runtimeconfig_200_keys", |b| {
        b.iter(|| pipeline(black_box(&rtc)))
    });
    let pb = fixtures::full_pool_budget("bench");
    group.bench_function("poolbudget_full", |b| b.iter(|| pipeline(black_box(&pb))));
    let (obj, observed) = converged(20, 10);
    group.bench_function("plan_converged_20_keys_10_snapshots", |b| {
        b.iter(|| reconcile::plan(black_box(&obj), black_box(&observed)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = core
}
criterion_main!(benches);
