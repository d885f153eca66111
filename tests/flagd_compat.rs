//! hotconf's flagd bucketing against flagd's own evaluator: `openfeature-flagd-core` 2.0.0 (the
//! in-process evaluator the Python flagd provider uses, `fractional` in its v3 form), installed
//! from PyPI by `hack/test-deps.sh`, evaluates a spread of flags and subjects, and
//! `hotconf::feature_flags::fractional` must give the same variant for every one.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hotconf::feature_flags::fractional;
use serde_json::{Value, json};

/// The Python that has `openfeature-flagd-core` (`$HOTCONF_FLAGD_PYTHON`, else the virtualenv
/// `hack/test-deps.sh` makes).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HOTCONF_FLAGD_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = PathBuf::from(home).join(".cache/hotconf/python/flagd-core-2.0.0/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `bash hack/test-deps.sh` (it installs openfeature-flagd-core 2.0.0 from PyPI)",
        path.display()
    );
    path
}

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
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flagd_eval.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running flagd's evaluator");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flagd's evaluator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flagd: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
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
