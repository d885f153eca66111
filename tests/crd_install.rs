//! Installing hotconf's CRDs on a current API server (custom resources on Kubernetes 1.36
//! semantics), the ways users do: `kubectl apply --server-side -f crds/`, the chart's CRDs (as
//! Helm's `crds/` files and as managed templates, by dry run and for real), an upgrade from the
//! previous shape with objects stored under it, and the examples. Each test starts a control
//! plane of its own, with no CRD installed.

mod common;

use common::{TestEnv, repo};
use hotconf::dev::control_plane::{ControlPlane, Options};

async fn fresh_plane(name: &str) -> &'static ControlPlane {
    let plane = ControlPlane::start(Options {
        log_dir: Some(
            repo()
                .join("target/control-plane-logs/crd_install")
                .join(name),
        ),
        controller_manager: false,
        ..Options::default()
    })
    .await
    .expect("control plane");
    common::assert_current_semantics(&plane);
    // Each test owns its plane for the life of the test binary.
    Box::leak(Box::new(plane))
}

fn path(p: &str) -> String {
    repo().join(p).display().to_string()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_established(env: &TestEnv) {
    ok(&env.kubectl_raw(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/runtimeconfigs.hotconf.dev",
        "crd/poolbudgets.hotconf.dev",
    ]));
}

/// Waits until kube-apiserver routes the kinds to the CRD server and `kubectl get` of both
/// works in the test's namespace.
async fn wait_served(env: &TestEnv) {
    for crd in ["runtimeconfigs.hotconf.dev", "poolbudgets.hotconf.dev"] {
        env.plane.wait_crd_routed(crd).await.unwrap();
    }
    common::eventually(60, "rtc and pb served", || async {
        env.kubectl_raw(&["get", "rtc,pb"])
            .status
            .success()
            .then_some(())
    })
    .await;
}

/// The CEL rules are kept in the stored schema (a server before 1.25 drops them).
fn assert_rules_kept(env: &TestEnv) {
    let database = common::stored_database_schema(env);
    assert!(
        database["x-kubernetes-validations"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{database}"
    );
}

#[tokio::test]
async fn server_side_apply_of_crds_then_the_examples() {
    let plane = fresh_plane("server-side").await;
    let env = TestEnv::on(plane, "install-ssa").await;
    ok(&env.kubectl_raw(&["apply", "--server-side", "-f", &path("crds")]));
    wait_established(&env);
    assert_rules_kept(&env);
    wait_served(&env).await;
    // Idempotent: a second apply changes nothing and conflicts with nothing.
    ok(&env.kubectl_raw(&["apply", "--server-side", "-f", &path("crds")]));

    // Every example passes the server's checks: by dry run, then for real (the invalid example
    // breaks only rules the operator's layer checks, so the server stores it).
    let examples = path("examples");
    for mode in [&["--dry-run=server"][..], &[]] {
        let mut args = vec!["apply", "--server-side", "-f", examples.as_str()];
        args.extend_from_slice(mode);
        let out = ok(&env.kubectl_raw(&args));
        assert!(
            out.contains("runtimeconfig.hotconf.dev/broken-config"),
            "{out}"
        );
    }
    let listed = ok(&env.kubectl_raw(&["get", "rtc,pb", "-o", "name"]));
    assert_eq!(listed.lines().count(), 6, "{listed}");

    // What the CRD's schema and rules forbid is refused at apply, every field named.
    let bad = "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: bad}\nspec:\n  metrics:\n    maxCpuPercent: 0\n    backpressure: {light: 0.9, moderate: 0.8}\n  pools:\n    database: {minConnections: 30, maxConnections: 10}\n";
    let err =
        refused(&env.kubectl_input(&["-n", &env.ns, "apply", "--server-side", "-f", "-"], bad));
    for field in [
        "spec.metrics.maxCpuPercent",
        "spec.metrics.backpressure.light",
        "spec.pools.database.minConnections",
    ] {
        assert!(err.contains(field), "{field} missing from: {err}");
    }
}

#[tokio::test]
async fn the_charts_crds_install_as_helm_files_and_as_managed_templates() {
    let plane = fresh_plane("chart").await;
    let env = TestEnv::on(plane, "install-chart").await;
    // What `helm install` does with the chart's crds/: creates them as they are.
    ok(&env.kubectl_raw(&[
        "create",
        "--dry-run=server",
        "-f",
        &path("charts/hotconf/crds"),
    ]));
    ok(&env.kubectl_raw(&["create", "-f", &path("charts/hotconf/crds")]));
    wait_established(&env);
    assert_rules_kept(&env);
    wait_served(&env).await;

    // `crds.manage=true`: the CRDs as templates, applied over the installed ones (what `helm
    // upgrade` does), by dry run and for real.
    let rendered = std::process::Command::new("bash")
        .arg(repo().join("hack/render-chart.sh"))
        .args(["-n", &env.ns, "--set", "crds.manage=true"])
        .output()
        .unwrap();
    let rendered = ok(&rendered);
    let crds: String = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| format!("---\n{}", serde_yaml::to_string(&d).unwrap()))
        .collect();
    assert_eq!(crds.matches("kind: CustomResourceDefinition").count(), 2);
    for dry in [true, false] {
        let mut args = vec!["apply", "--server-side", "--force-conflicts", "-f", "-"];
        if dry {
            args.push("--dry-run=server");
        }
        ok(&env.kubectl_input(&args, &crds));
    }
    let labels = ok(&env.kubectl_raw(&[
        "get",
        "crd",
        "runtimeconfigs.hotconf.dev",
        "-o",
        "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
    ]));
    assert_eq!(labels, "keep");
    wait_established(&env);
}

#[tokio::test]
async fn an_upgrade_from_the_previous_crds_keeps_what_was_stored() {
    let plane = fresh_plane("upgrade").await;
    let env = TestEnv::on(plane, "install-upgrade").await;
    let previous = "tests/fixtures/crds-previous";
    // The RuntimeConfig CRD as shipped before never installed on a current server: its rule
    // over free-form values does not compile. (This is the bug the fixture keeps.)
    let err = refused(&env.kubectl_raw(&[
        "apply",
        "--server-side",
        "-f",
        &path(&format!("{previous}/runtimeconfigs.hotconf.dev.yaml")),
    ]));
    assert!(err.contains("undefined field 'values'"), "{err}");
    // The PoolBudget one did, and its looser rules let this through: minConnections above the
    // default maxConnections of 20 (the old rule compared only when both were set).
    ok(&env.kubectl_raw(&[
        "apply",
        "--server-side",
        "-f",
        &path(&format!("{previous}/poolbudgets.hotconf.dev.yaml")),
    ]));
    common::eventually(60, "the previous PoolBudget CRD served", || async {
        env.kubectl_raw(&["get", "pb"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let stored = "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: legacy}\nspec:\n  pools: {database: {minConnections: 30}}\n  metrics: {maxCpuPercent: 50}\n";
    env.apply_yaml(stored);

    // The upgrade: today's CRDs over the previous ones.
    ok(&env.kubectl_raw(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &path("crds"),
    ]));
    wait_established(&env);
    assert_rules_kept(&env);
    wait_served(&env).await;
    // The stored object is still there and still editable where it is not at fault (CRD
    // validation ratcheting: an unchanged invalid part does not block an update)...
    let got = ok(&env.kubectl_raw(&[
        "get",
        "pb",
        "legacy",
        "-o",
        "jsonpath={.spec.pools.database.minConnections}",
    ]));
    assert_eq!(got, "30");
    ok(&env.kubectl_raw(&[
        "patch",
        "pb",
        "legacy",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":{"maxCpuPercent":60}}}"#,
    ]));
    // ...while the same spec is refused when it is new, naming the field.
    let err = refused(&env.kubectl_input(
        &["-n", &env.ns, "apply", "-f", "-"],
        &stored.replace("name: legacy", "name: fresh"),
    ));
    assert!(err.contains("spec.pools.database.minConnections"), "{err}");
    // And the RuntimeConfig CRD installs now.
    common::eventually(60, "rtc served", || async {
        env.kubectl_raw(&["get", "rtc"])
            .status
            .success()
            .then_some(())
    })
    .await;
}
