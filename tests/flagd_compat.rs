//! hotconf's flagd bucketing against flagd's own evaluator: `openfeature-flagd-core` 2.0.0 (the
//! in-process evaluator the Python flagd provider uses, `fractional` in its v3 form), installed
//! from PyPI by `hack/test-deps.sh`, evaluates a spread of flags and subjects, and
//! `hotconf::feature_flags::fractional` must give the same variant for every one.

mod agent_common;

use hotconf::crd::Format;
use hotconf::feature_flags::{fractional, resolve};
use serde_json::{Value, json};

#[test]
fn every_subject_gets_the_variant_flagd_gives_it() {
    let flags: Vec<(&str, Vec<(&str, i64)>)> = vec![
        ("new_ui", vec![("on", 25), ("off", 75)]),
        ("checkout_flow", vec![("classic", 50), ("streamlined", 50)]),
        ("abc", vec![("a", 1), ("b", 2), ("c", 3), ("d", 94)]),
        ("zero-in-the-middle", vec![("x", 10), ("y", 0), ("z", 90)]),
        ("ключ-🚀", vec![("one", 1), ("two", 1), ("three", 1)]),
        ("big", vec![("p", 1_000_000), ("q", 2_000_000)]),
    ];
    let mut subjects: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    subjects.extend((0..50).map(|i| format!("ü-{i}-ñ")));
    subjects.extend((0..20).map(|i| "x".repeat(20 + i * 13)));
    subjects.push("a".into());
    let request = json!({
        "flags": flags.iter().map(|(key, w)| json!({"key": key, "weights": w})).collect::<Vec<_>>(),
        "subjects": subjects,
    });
    let flagd = flagd_eval(&request);
    assert_eq!(flagd.len(), flags.len() * subjects.len());
    let mut i = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (key, weights) in &flags {
        for subject in &subjects {
            let theirs = flagd[i][0].as_str();
            assert_eq!(
                flagd[i][1], "TARGETING_MATCH",
                "{key}/{subject}: {:?}",
                flagd[i]
            );
            assert_eq!(
                fractional(key, subject, weights),
                theirs,
                "{key}/{subject}: hotconf and flagd disagree"
            );
            seen.insert((*key, theirs.unwrap_or_default().to_string()));
            i += 1;
        }
    }
    // A spread, not a corner: every variant with weight was hit somewhere.
    for (key, weights) in &flags {
        for (variant, w) in weights {
            assert_eq!(
                seen.contains(&(*key, variant.to_string())),
                *w > 0,
                "{key}/{variant}"
            );
        }
    }
    eprintln!("{i} evaluations agree with openfeature-flagd-core 2.0.0");
}

/// The flagd-format projection (`target.format: flagd`) is what flagd evaluates to the same
/// variants and values as hotconf, for variant flags (targets and splits) and on/off flags
/// (deny, allow and a flagd-bucketed rollout), switched on or off.
#[test]
fn the_flagd_projection_evaluates_in_flagd_as_in_hotconf() {
    let doc = json!({"featureFlags": {
        "checkout_flow": {"variants": {"classic": "v1", "streamlined": "v2"}, "defaultVariant": "classic",
            "fractional": {"classic": 50, "streamlined": 50}, "targets": {"streamlined": ["beta-1", "beta-2"]},
            "enabled": true, "bucketing": "flagd"},
        "banner": {"variants": {"none": "", "sale": "20% off", "ship": "free shipping"}, "defaultVariant": "none",
            "fractional": {"none": 80, "sale": 10, "ship": 10}, "targets": {}, "enabled": true, "bucketing": "flagd"},
        "pricing": {"variants": {"a": {"discount": 0}, "b": {"discount": 15}}, "defaultVariant": "a",
            "fractional": {"a": 1, "b": 3}, "targets": {"b": ["vip"]}, "enabled": true, "bucketing": "flagd"},
        "static": {"variants": {"x": 1, "y": 2}, "defaultVariant": "y", "fractional": {}, "targets": {"x": ["beta-1"]},
            "enabled": true, "bucketing": "flagd"},
        "new_ui": {"enabled": true, "rolloutPercentage": 25, "allow": ["beta-1"], "deny": ["user-3"], "bucketing": "flagd"},
        "everyone": {"enabled": true, "rolloutPercentage": 100, "allow": [], "deny": ["user-5"]},
        // Switched off: defaultVariant for everyone, listed or not.
        "paused": {"variants": {"a": "old", "b": "new"}, "defaultVariant": "b",
            "fractional": {"a": 1, "b": 1}, "targets": {"a": ["vip"]}, "enabled": false, "bucketing": "flagd"},
        "dark": {"enabled": false, "rolloutPercentage": 50, "allow": ["beta-1"], "deny": [], "bucketing": "flagd"},
    }});
    let text = hotconf::document::render(&doc, Format::Flagd);
    let definition: Value = serde_json::from_str(&text).unwrap();
    let flags: Vec<&str> = doc["featureFlags"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut subjects: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    subjects.extend(["beta-1", "beta-2", "vip"].map(String::from));
    let evaluate: Vec<Value> = flags
        .iter()
        .flat_map(|f| subjects.iter().map(move |s| json!([f, s])))
        .collect();
    let flagd = flagd_eval(&json!({"definition": definition, "evaluate": evaluate}));
    assert_eq!(flagd.len(), evaluate.len());
    for (pair, theirs) in evaluate.iter().zip(&flagd) {
        let (flag, subject) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let ours = resolve(flag, &doc["featureFlags"][flag], Some(subject)).unwrap();
        assert_eq!(
            (json!(ours.variant), &ours.value),
            (theirs[0].clone(), &theirs[2]),
            "{flag}/{subject}: hotconf {ours:?}, flagd {theirs:?}"
        );
    }
    eprintln!("{} evaluations of the flagd projection agree", flagd.len());
}

/// The flagd-testbed's `@fractional-v3` scenarios that bucket by the targeting key, the only
/// bucketing value hotconf uses (the testbed's other v3 scenarios seed with JSONLogic
/// expressions such as `cat`, which a hotconf flag cannot state). From open-feature/flagd-testbed
/// 3.9.0 (commit 82ba89e, Apache-2.0): `gherkin/targeting.feature`, "Fractional operator
/// shorthand", Examples v3, over `fractional-flag-shorthand` of `flags/custom-ops.json`:
/// variants heads/tails/draw, default draw, `fractional: [["heads"], ["tails", 1]]` (a missing
/// weight is 1). The v1 and v2 tables give jon@company.com `heads`; v3 gives `tails`.
#[test]
fn the_flagd_testbeds_fractional_v3_shorthand_scenarios_hold() {
    let flag = json!({"variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
        "defaultVariant": "draw", "fractional": {"heads": 1, "tails": 1}, "targets": {},
        "enabled": true, "bucketing": "flagd"});
    for (key, want) in [("jon@company.com", "tails"), ("jane@company.com", "tails")] {
        let weights = [("heads", 1), ("tails", 1)];
        assert_eq!(
            fractional("fractional-flag-shorthand", key, &weights),
            Some(want),
            "{key}"
        );
        let got = resolve("fractional-flag-shorthand", &flag, Some(key)).unwrap();
        assert_eq!(
            (got.variant.as_str(), &got.value),
            (want, &json!(want)),
            "{key}"
        );
    }
    // "Fractional operator with single entry": one weight takes every subject.
    assert_eq!(
        fractional(
            "fractional-single-entry-flag",
            "some-targeting-key",
            &[("single", 1)]
        ),
        Some("single")
    );
}

/// Runs flagd's evaluator on a request (see tests/fixtures/flagd_eval.py).
fn flagd_eval(request: &Value) -> Vec<Value> {
    agent_common::run_python_json("flagd_eval.py", &[], request)
}
