//! The built `hotconf` binary's offline commands, as a CI job runs them: `validate` and `render`
//! on the examples and on `tests/fixtures/invalid/`, from files, directories and stdin; plus the
//! errors a cluster command gives before (or without) reaching a cluster. No cluster needed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in the repository root (so paths in messages are the relative ones given).
fn hotconf(args: &[&str]) -> Output {
    hotconf_with_stdin(args, None)
}

fn hotconf_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotconf"))
        .args(args)
        .current_dir(repo())
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running hotconf");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// Asserts that every expected line is in `text`, and that `text` has exactly that many lines.
fn assert_lines(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "missing line:\n{line}\nin:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), expected.len(), "in:\n{text}");
}

const VALID_EXAMPLES: [&str; 4] = [
    "examples/feature-flags.yaml",
    "examples/lazy-loading.yaml",
    "examples/pool-budget.yaml",
    "examples/trading-bot.yaml",
];

#[test]
fn every_valid_example_passes() {
    for example in VALID_EXAMPLES {
        let out = hotconf(&["validate", "-f", example]);
        assert_eq!(code(&out), 0, "{example}: {}{}", stdout(&out), stderr(&out));
        assert_eq!(stdout(&out), "", "{example}: no errors printed");
        assert!(
            stderr(&out).contains("1 hotconf object checked: 1 valid, 0 invalid"),
            "{example}: {}",
            stderr(&out)
        );
    }
    // lazy-loading's valuesFrom resolves against the Secret in the same file: no note about it.
    let out = hotconf(&["validate", "-f", "examples/lazy-loading.yaml"]);
    assert!(!stderr(&out).contains("cannot be resolved offline"));
    assert!(stderr(&out).contains(
        "examples/lazy-loading.yaml:3 Secret/default/lazy-loading-db: note: not a hotconf kind"
    ));
}

#[test]
fn the_invalid_example_fails_with_every_message() {
    let out = hotconf(&["validate", "-f", "examples/invalid.yaml"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let prefix = "examples/invalid.yaml:6 RuntimeConfig/default/broken-config";
    assert_lines(
        &stdout(&out),
        &[
            &format!("{prefix}: spec.values.check_interval: must be at most 3600 (got 7200)"),
            &format!(
                "{prefix}: spec.values.strategy: must be one of [AGGRESSIVE, BALANCED, CONSERVATIVE] (got \"RECKLESS\")"
            ),
            &format!("{prefix}: spec.values.unknown_key: is not declared in spec.schema (got 1)"),
            &format!(
                "{prefix}: spec.featureFlags.new_ui.deny[0]: is also in allow: a subject is either allowed or denied, not both (got \"user-1\")"
            ),
        ],
    );
    assert!(stderr(&out).contains("0 valid, 1 invalid (4 errors)"));
}

#[test]
fn the_examples_directory_fails_only_for_the_invalid_example() {
    let out = hotconf(&["validate", "-f", "examples"]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out)
            .lines()
            .all(|l| l.starts_with("examples/invalid.yaml:6 RuntimeConfig/default/broken-config: ")),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("6 hotconf objects checked: 5 valid, 1 invalid (4 errors)"),
        "{}",
        stderr(&out)
    );
}

const RTC: &str = "tests/fixtures/invalid/runtime-config.yaml:2 RuntimeConfig/shop/checkout";
const PB: &str = "tests/fixtures/invalid/pool-budgets.yaml:9 PoolBudget/default/budget";

fn fixture_errors() -> Vec<String> {
    [
        format!(
            "{RTC}: spec.values.check_interval: must be at most 3600 (got 7200)"
        ),
        format!(
            "{RTC}: spec.values.db_password: is a sensitive parameter: it may only be set through valuesFrom[].secretKeyRef, never as a literal in values"
        ),
        format!(
            "{RTC}: spec.values.strategy: must be one of [AGGRESSIVE, BALANCED] (got \"RECKLESS\")"
        ),
        format!("{RTC}: spec.values.unknown_key: is not declared in spec.schema (got 1)"),
        format!(
            "{RTC}: spec.featureFlags.new_ui.rolloutPercentage: must be between 0 and 100 (got 150)"
        ),
        format!(
            "{RTC}: spec.featureFlags.new_ui.deny[0]: is also in allow: a subject is either allowed or denied, not both (got \"user-1\")"
        ),
        format!(
            "{RTC}: spec.maintenance.until: must be an RFC 3339 timestamp such as 2025-06-01T18:00:00Z (got \"next tuesday\")"
        ),
        format!("{RTC}: spec.revisionHistoryLimit: must be between 1 and 100 (got 0)"),
        format!(
            "{PB}: spec.revisonHistoryLimit: unknown field: the CRD does not declare it (the API server drops it, or refuses the object under strict field validation)"
        ),
        format!("{PB}: spec.metrics.maxMemoryMB: must be between 64 and 2048 (got 4096)"),
        format!("{PB}: spec.metrics.maxCpuPercent: must be between 1 and 100 (got 0)"),
        format!(
            "{PB}: spec.pools.database.idleTimeout: must be shorter than maxLifetime (1h >= 30m) (got \"1h\")"
        ),
        format!(
            "{PB}: spec.pools.redis.retryDelay: must be a duration such as 30s, 5m or 1h30m: expected a number before each unit (got \"soon\")"
        ),
        format!("{PB}: spec.pools.cache.maxEntries: must be between 1 and 10000000 (got 0)"),
        "tests/fixtures/invalid/mixed.yaml:10 PoolBudget/default/typed: spec.pools.database.maxConnections: must be of type integer (got \"ten\")".to_string(),
        "tests/fixtures/invalid/mixed.yaml:20 RuntimeConfig/default/future: apiVersion: is not served: use hotconf.dev/v1alpha1 (got \"hotconf.dev/v1\")".to_string(),
        "tests/fixtures/invalid/syntax-error.yaml:8: cannot parse YAML: while parsing a flow sequence, expected ',' or ']' at byte 218 line 13 column 20".to_string(),
    ]
    .into()
}

#[test]
fn every_invalid_fixture_is_reported_at_once() {
    let out = hotconf(&["validate", "-f", "tests/fixtures/invalid"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let expected = fixture_errors();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_lines(&stdout(&out), &expected);
    let err = stderr(&out);
    assert!(
        err.contains(
            "tests/fixtures/invalid/mixed.yaml:2 Deployment/default/web: note: not a hotconf kind: skipped"
        ),
        "{err}"
    );
    // The valid PoolBudget and the document before the syntax error were checked too.
    assert!(
        err.contains(
            "6 hotconf objects checked: 2 valid, 4 invalid (16 errors); 1 document skipped; 1 file or document unreadable"
        ),
        "{err}"
    );
    // Credentials never reach the output, not even in an error.
    assert!(!stdout(&out).contains("hunter2"));
}

#[test]
fn each_invalid_file_fails_on_its_own() {
    for file in [
        "runtime-config.yaml",
        "pool-budgets.yaml",
        "mixed.yaml",
        "syntax-error.yaml",
    ] {
        let path = format!("tests/fixtures/invalid/{file}");
        let out = hotconf(&["validate", "-f", &path]);
        assert_eq!(code(&out), 1, "{path}: {}", stdout(&out));
        assert!(!stdout(&out).is_empty(), "{path}");
    }
}

#[test]
fn json_output_parses_with_the_right_counts() {
    let out = hotconf(&["validate", "-f", "tests/fixtures/invalid", "-o", "json"]);
    assert_eq!(code(&out), 1);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    // mixed.yaml 3, pool-budgets.yaml 2, runtime-config.yaml 1, syntax-error.yaml 2.
    assert_eq!(entries.len(), 8, "{entries:#?}");
    let count = |pred: &dyn Fn(&Value) -> bool| entries.iter().filter(|e| pred(e)).count();
    assert_eq!(count(&|e| e["valid"] == true), 2);
    assert_eq!(count(&|e| e["skipped"] == true), 1);
    let errors: usize = entries
        .iter()
        .map(|e| e["errors"].as_array().unwrap().len())
        .sum();
    assert_eq!(errors, fixture_errors().len());
    let rtc = entries
        .iter()
        .find(|e| e["name"] == "checkout")
        .expect("the RuntimeConfig");
    assert_eq!(rtc["file"], "tests/fixtures/invalid/runtime-config.yaml");
    assert_eq!(rtc["index"], 0);
    assert_eq!(rtc["kind"], "RuntimeConfig");
    assert_eq!(rtc["namespace"], "shop");
    assert_eq!(rtc["errors"].as_array().unwrap().len(), 8);
    let first = &rtc["errors"][0];
    assert_eq!(first["path"], "spec.values.check_interval");
    assert_eq!(first["value"], "7200");
    assert_eq!(first["rule"], "must be at most 3600");
    let sensitive = rtc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "spec.values.db_password")
        .unwrap();
    assert_eq!(
        sensitive["value"],
        Value::Null,
        "a sensitive value is never shown"
    );
    let deployment = entries.iter().find(|e| e["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["notes"][0], "not a hotconf kind: skipped");
    let broken = entries.iter().find(|e| e["kind"].is_null()).unwrap();
    assert_eq!(broken["index"], 1);
    assert!(
        broken["errors"][0]["rule"]
            .as_str()
            .unwrap()
            .starts_with("cannot parse YAML")
    );

    // The examples, as JSON: everything valid but one.
    let out = hotconf(&["validate", "-f", "examples", "--output=json"]);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let crs: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "RuntimeConfig" || e["kind"] == "PoolBudget")
        .collect();
    assert_eq!(crs.len(), 6, "six CRs among {} documents", entries.len());
    assert_eq!(crs.iter().filter(|e| e["valid"] == true).count(), 5);
    assert!(
        entries
            .iter()
            .filter(|e| e["kind"] != "RuntimeConfig" && e["kind"] != "PoolBudget")
            .all(|e| e["skipped"] == true),
        "the Secret and the sidecar example's objects are skipped"
    );
}

#[test]
fn stdin_is_read_with_a_dash_and_namespaced_with_n() {
    let text = std::fs::read_to_string(repo().join("examples/invalid.yaml")).unwrap();
    let out = hotconf_with_stdin(&["validate", "-f", "-", "-n", "team-a"], Some(&text));
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).starts_with(
            "<stdin>:6 RuntimeConfig/team-a/broken-config: spec.values.check_interval: "
        ),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 4);

    // Files and stdin together.
    let valid = std::fs::read_to_string(repo().join("examples/trading-bot.yaml")).unwrap();
    let out = hotconf_with_stdin(
        &["validate", "-f", "-", "-f", "examples/pool-budget.yaml"],
        Some(&valid),
    );
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stderr(&out).contains("2 hotconf objects checked: 2 valid"));
}

#[test]
fn unresolvable_references_are_a_note_unless_strict() {
    // lazy-loading without its Secret: the reference cannot be resolved offline.
    let text = std::fs::read_to_string(repo().join("examples/lazy-loading.yaml")).unwrap();
    let cr = text.split("\n---\n").nth(1).unwrap();
    let out = hotconf_with_stdin(&["validate", "-f", "-"], Some(cr));
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "<stdin>:1 RuntimeConfig/default/lazy-loading: note: spec.valuesFrom[0] (db_password): key \"password\" of Secret \"lazy-loading-db\" cannot be resolved offline"
        ),
        "{}",
        stderr(&out)
    );
    let out = hotconf_with_stdin(&["validate", "-f", "-", "-o", "json"], Some(cr));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries[0]["valid"], true);
    assert_eq!(entries[0]["notes"].as_array().unwrap().len(), 1);

    let out = hotconf_with_stdin(&["validate", "-f", "-", "--strict-refs"], Some(cr));
    assert_eq!(code(&out), 1);
    assert_lines(
        &stdout(&out),
        &[
            "<stdin>:1 RuntimeConfig/default/lazy-loading: spec.valuesFrom[0].secretKeyRef: cannot read key \"password\" of Secret \"lazy-loading-db\": no Secret manifest among the inputs provides it, and Secrets in the cluster are not read offline",
        ],
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = hotconf(&["validate", "-f", "examples/nope.yaml"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stdout(&out),
        "examples/nope.yaml: cannot read the file: No such file or directory (os error 2)\n"
    );
}

/// Splits multi-document YAML into values.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn render_prints_the_projection_of_each_example() {
    let mut args = vec!["render"];
    for example in VALID_EXAMPLES {
        args.extend(["-f", example]);
    }
    let out = hotconf(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let docs = documents(&text);
    let names: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs = |k: &str, n: &str| (k.to_string(), n.to_string());
    assert_eq!(
        names,
        vec![
            pairs("ConfigMap", "storefront-flags"),
            pairs("ConfigMap", "lazy-loading-config"),
            pairs("Secret", "lazy-loading-config"),
            pairs("ConfigMap", "order-service-pools"),
            pairs("ConfigMap", "trading-bot"),
        ]
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "default");
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "hotconf"
        );
        assert!(doc["metadata"]["annotations"]["hotconf.dev/revision"].is_null());
    }
    // The document key holds the document in the target's format.
    let bot = &docs[4];
    let json: Value = serde_json::from_str(bot["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["values"]["max_open_positions"], 8);
    assert_eq!(json["values"]["order_timeout"], "30s");
    let hash = bot["metadata"]["annotations"]["hotconf.dev/hash"]
        .as_str()
        .unwrap();
    assert_eq!(hash.len(), 64);
    let pools = &docs[3];
    assert!(
        pools["data"]["config.env"]
            .as_str()
            .unwrap()
            .contains("POOLS_CACHE_EVICTION_POLICY=LFU\n")
    );
    let flags = &docs[0];
    assert_eq!(flags["data"]["featureFlags.new_ui.rolloutPercentage"], "25");

    // valuesFrom: the fingerprint is unknown offline, the Secret shows keys only.
    let lazy = &docs[1];
    let yaml: Value = serde_yaml::from_str(lazy["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(yaml["secrets"]["db_password"]["fingerprint"], Value::Null);
    assert!(lazy["metadata"]["annotations"]["hotconf.dev/hash"].is_null());
    assert!(text.contains("# valuesFrom fingerprints are salted"));
    assert_eq!(docs[2]["data"]["db_password"], "<redacted>");
    assert!(!text.contains("change-me-in-real-life"));
}

#[test]
fn render_refuses_invalid_specs() {
    let out = hotconf(&["render", "-f", "examples/invalid.yaml"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).lines().count(), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("spec.values.check_interval: must be at most 3600"));
}

#[test]
fn render_skips_paused_objects() {
    let yaml = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: p}\nspec: {paused: true}\n";
    let out = hotconf_with_stdin(&["render", "-f", "-"], Some(yaml));
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("spec.paused is true"));
}

fn plugin_link(dir: &Path) -> PathBuf {
    let link = dir.join("kubectl-hotconf");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hotconf"), &link).unwrap();
    link
}

#[test]
fn as_kubectl_hotconf_it_names_itself_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(plugin_link(dir.path()))
        .args(["history", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("Usage: kubectl hotconf history [OPTIONS] <KIND/NAME>"),
        "{text}"
    );
}

#[test]
fn cluster_commands_fail_with_one_clear_line() {
    // Not a hotconf kind: refused before any connection.
    let out = hotconf(&["history", "deployment/web"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        "error: deployment is not a hotconf kind; use rtc/NAME or pb/NAME\n"
    );
    let out = hotconf(&["diff", "web", "1", "2"]);
    assert_eq!(
        stderr(&out),
        "error: expected KIND/NAME such as rtc/web or pb/web\n"
    );

    // An unreachable cluster.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let kc = kubeconfig.to_str().unwrap();
    for args in [
        vec!["history", "rtc/a", "--kubeconfig", kc],
        vec!["rollback", "pb/a", "--to", "1", "--kubeconfig", kc],
        vec!["export", "rtc/a", "--revision", "1", "--kubeconfig", kc],
    ] {
        let out = hotconf(&args);
        assert_eq!(code(&out), 1, "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: cannot reach the cluster at https://127.0.0.1:{port}: "
            )),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    }

    // A kubeconfig that does not exist, and a context it does not have.
    let out = hotconf(&[
        "history",
        "rtc/a",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with("error: cannot load the kubeconfig /nonexistent/kubeconfig: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
    let out = hotconf(&["history", "rtc/a", "--kubeconfig", kc, "--context", "nope"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// `validate` judges as the operator does, beyond the schema rules too: a valid spec whose
/// flattened keys cannot be data keys, or whose document one revision of history cannot hold,
/// fails here before it is ever applied.
#[test]
fn a_spec_the_operator_could_not_project_fails_validation() {
    let flat = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: flat}\nspec:\n  values: {\"has space\": 1}\n  target: {flatten: true}\n";
    let out = hotconf_with_stdin(&["validate", "-f", "-"], Some(flat));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("spec.target.flatten") && text.contains("\"values.has space\""),
        "{text}"
    );
    let huge = format!(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {{name: huge}}\nspec:\n  values: {{blob: {}}}\n",
        "x".repeat(300 * 1024)
    );
    let out = hotconf_with_stdin(&["validate", "-f", "-"], Some(&huge));
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains(".status.history"), "{}", stdout(&out));
    // The same without flatten is valid.
    let plain = flat.replace("  target: {flatten: true}\n", "");
    assert_eq!(
        code(&hotconf_with_stdin(&["validate", "-f", "-"], Some(&plain))),
        0
    );
}

/// `hotconf dev` applies the examples as it reads them (YAML 1.2); kubectl reads YAML 1.1 (a
/// plain `0440` is octal there and a string here). Every example must mean the same to both.
#[test]
fn every_example_reads_as_kubectl_reads_it() {
    reads_as_kubectl_reads_it("examples");
}

// YAML 1.1's booleans, octals, underscores, key conversions and merges (the fixture's comment).
#[test]
fn yaml_1_1_manifests_read_as_kubectl_reads_them() {
    reads_as_kubectl_reads_it("tests/fixtures/yaml");
    // The same reading is what validate judges: `cache: yes` is the boolean the schema asks for.
    let out = hotconf(&["validate", "-f", "tests/fixtures/yaml/yaml-1.1.yaml"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stdout(&out) + &stderr(&out);
    assert!(said.contains("key \"repeated\" is given twice"), "{said}");
}

/// Every document under `path` (relative to the repository), read by hotconf, equals kubectl's
/// reading of it (`kubectl label --local -o json`, the added label taken off again).
fn reads_as_kubectl_reads_it(path: &str) {
    let ours = hotconf::dev::manifests::read(&[repo().join(path)]).unwrap();
    let out = Command::new("kubectl")
        .args([
            "label",
            "--local",
            "-o",
            "json",
            "-f",
            path,
            "hotconf-check=1",
        ])
        .current_dir(repo())
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("running kubectl");
    assert!(out.status.success(), "kubectl: {}", stderr(&out));
    let theirs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(|v| {
            let mut v = v.unwrap();
            let labels = v["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("hotconf-check");
            if labels.is_empty() {
                v["metadata"].as_object_mut().unwrap().remove("labels");
            }
            v
        })
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (doc, kubectl) in ours.iter().zip(&theirs) {
        assert_eq!(
            &doc.value,
            kubectl,
            "{} document {} reads differently",
            doc.file.display(),
            doc.index
        );
    }
}
