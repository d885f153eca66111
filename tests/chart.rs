//! The Helm chart: it renders (helm, or the Go text/template + sprig renderer), every rendered
//! object passes the real API server's dry run, its CRDs match `crds/`, and the operator runs
//! with exactly the chart's RBAC.

mod common;

use std::process::Command;

use common::{TestEnv, eventually, repo};
use hotconf::crd::{PoolBudget, RuntimeConfig};
use hotconf::dev::control_plane::{ControlPlane, Options};
use hotconf::kinds::ConfigResource;
use kube::Api;
use tokio::sync::OnceCell;

/// Renders the chart with extra renderer arguments; panics with the renderer's error.
fn render(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("hack/render-chart.sh"))
        .args(args)
        .output()
        .expect("running hack/render-chart.sh");
    assert!(
        out.status.success(),
        "rendering failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(rendered: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(rendered: &str) -> Vec<String> {
    docs(rendered)
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `kubectl apply` of rendered YAML (a server-side dry run when `dry_run`); returns stdout.
fn kubectl_apply(env: &TestEnv, yaml: &str, dry_run: bool) -> String {
    let mut args = vec!["apply", "--validate=false", "-f", "-"];
    if dry_run {
        args.push("--dry-run=server");
    }
    let out = env.kubectl_input(&args, yaml);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_dry_run_accepts_all(env: &TestEnv, rendered: &str) {
    let out = kubectl_apply(env, rendered, true);
    let accepted = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(accepted, docs(rendered).len(), "{out}");
}

#[tokio::test]
async fn default_values_render_and_pass_a_server_dry_run() {
    let env = TestEnv::new("chart-default").await;
    let rendered = render(&["-n", &env.ns]);
    let kinds = kinds(&rendered);
    for expected in [
        "Deployment/hotconf",
        "ServiceAccount/hotconf",
        "ClusterRole/hotconf",
        "ClusterRoleBinding/hotconf",
        "ClusterRole/hotconf-crds",
        "Role/hotconf-leader-election",
        "Service/hotconf-metrics",
        "ClusterRole/hotconf-edit",
        "ClusterRole/hotconf-view",
    ] {
        assert!(
            kinds.contains(&expected.to_string()),
            "{expected} not in {kinds:?}"
        );
    }
    assert!(!kinds.iter().any(|k| k.starts_with("PodDisruptionBudget/")));
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("CustomResourceDefinition/"))
    );
    let deployment = docs(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let pod_sc = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        !args.contains(&"--leader-elect"),
        "one replica: no election"
    );
    assert_dry_run_accepts_all(&env, &rendered);
}

#[tokio::test]
async fn two_replicas_with_namespaced_rbac_render_and_pass_a_server_dry_run() {
    let env = TestEnv::new("chart-scoped").await;
    let a = env.plane.namespace("team-a").await.unwrap();
    let b = env.plane.namespace("team-b").await.unwrap();
    let values = env.plane.dir().join(format!("values-{}.yaml", env.ns));
    std::fs::write(
        &values,
        format!(
            "replicaCount: 2\nwatchNamespaces: [{a}, {b}]\nmetrics:\n  serviceMonitor: {{enabled: true}}\n"
        ),
    )
    .unwrap();
    let rendered = render(&["-n", &env.ns, "-f", values.to_str().unwrap()]);
    let kinds = kinds(&rendered);
    assert_eq!(kinds.iter().filter(|k| *k == "Role/hotconf").count(), 2);
    assert_eq!(
        kinds.iter().filter(|k| *k == "RoleBinding/hotconf").count(),
        2
    );
    assert!(!kinds.contains(&"ClusterRole/hotconf".to_string()));
    assert!(kinds.contains(&"PodDisruptionBudget/hotconf".to_string()));
    assert!(kinds.contains(&"ServiceMonitor/hotconf".to_string()));
    assert!(rendered.contains("- --leader-elect"));
    assert!(rendered.contains(&format!("- --namespaces={a},{b}")));
    // The ServiceMonitor needs its CRD; a minimal one stands in for the Prometheus operator's.
    kubectl_apply(
        &env,
        &std::fs::read_to_string(repo().join("tests/fixtures/servicemonitor-crd.yaml")).unwrap(),
        false,
    );
    env.plane
        .wait_crd_routed("servicemonitors.monitoring.coreos.com")
        .await
        .unwrap();
    eventually(30, "the ServiceMonitor CRD to be served", || async {
        let out = env.kubectl_raw(&["get", "servicemonitors"]);
        out.status.success().then_some(())
    })
    .await;
    assert_dry_run_accepts_all(&env, &rendered);
}

#[test]
fn chart_crds_are_the_generated_crds() {
    for file in [
        "runtimeconfigs.hotconf.dev.yaml",
        "poolbudgets.hotconf.dev.yaml",
    ] {
        let generated = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
        let in_chart =
            std::fs::read_to_string(repo().join("charts/hotconf/crds").join(file)).unwrap();
        assert!(
            generated == in_chart,
            "charts/hotconf/crds/{file} differs from crds/{file}: copy it over"
        );
    }
}

#[tokio::test]
async fn managed_crds_render_as_kept_templates() {
    let env = TestEnv::new("chart-crds").await;
    let rendered = render(&["-n", &env.ns, "--set", "crds.manage=true"]);
    let crds: Vec<_> = docs(&rendered)
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 2);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        let name = crd["metadata"]["name"].as_str().unwrap();
        let original: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(repo().join("crds").join(format!("{name}.yaml"))).unwrap(),
        )
        .unwrap();
        // YAML round trips may write 1.0 as 1: compare canonical JSON.
        let canonical = |v: &serde_yaml::Value| {
            hotconf::document::canonical_json(&serde_json::to_value(v).unwrap())
        };
        assert_eq!(
            canonical(&crd["spec"]),
            canonical(&original["spec"]),
            "{name}: same spec as crds/"
        );
    }
    assert_dry_run_accepts_all(&env, &rendered);
}

fn can_i(env: &TestEnv, sa: &str, args: &[&str]) -> bool {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.plane.kubeconfig_path())
        .args(["auth", "can-i"])
        .args(args)
        .arg(format!("--as={sa}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Asserts that `sa` may do none of `denied` (each a `kubectl auth can-i` argument list).
fn assert_denied(env: &TestEnv, sa: &str, denied: &[Vec<&str>]) {
    for args in denied {
        assert!(!can_i(env, sa, args), "the operator may {args:?}");
    }
}

async fn examples_reconcile(env: &TestEnv) {
    for name in [
        "lazy-loading",
        "trading-bot",
        "feature-flags",
        "pool-budget",
    ] {
        env.kubectl(&[
            "apply",
            "-f",
            &repo()
                .join(format!("examples/{name}.yaml"))
                .display()
                .to_string(),
        ]);
    }
    for name in ["lazy-loading", "trading-bot", "storefront-flags"] {
        ready::<RuntimeConfig>(env, name).await;
    }
    ready::<PoolBudget>(env, "order-service").await;
}

async fn ready<K: ConfigResource>(env: &TestEnv, name: &str) {
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(60, &format!("{name} to be Ready"), || {
        let api = api.clone();
        async move {
            let obj = api.get_opt(name).await.unwrap()?;
            obj.config_status()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_namespaced_chart_rbac() {
    let env = TestEnv::new("rbac-scoped").await;
    let release = env.plane.namespace("hotconf-system").await.unwrap();
    let rendered = render(&[
        "-n",
        &release,
        "--name",
        "scoped",
        "--set",
        &format!("watchNamespaces={{{}}}", env.ns),
    ]);
    kubectl_apply(&env, &rendered, false);
    let sa = format!("system:serviceaccount:{release}:scoped-hotconf");
    let _operator = env.start_operator_with(
        &sa,
        &[
            "--leader-elect".into(),
            format!("--lease-namespace={release}"),
            "--lease-name=scoped-hotconf".into(),
        ],
    );
    examples_reconcile(&env).await;

    let ns = env.ns.as_str();
    assert!(
        can_i(&env, &sa, &["get", "secrets", "-n", ns]),
        "valuesFrom reads Secrets here"
    );
    assert!(can_i(&env, &sa, &["patch", "configmaps", "-n", ns]));
    assert!(can_i(&env, &sa, &["update", "leases", "-n", &release]));
    let denied = [
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["list", "secrets", "--all-namespaces"],
        vec!["get", "configmaps", "-n", "default"],
        vec!["update", "leases", "-n", ns],
        vec!["patch", "deployments", "-n", ns],
        vec!["create", "deployments", "-n", ns],
        vec!["create", "pods", "-n", ns],
        vec!["update", "runtimeconfigs", "-n", ns],
        vec!["delete", "runtimeconfigs", "-n", ns],
        vec!["create", "roles", "-n", ns],
        vec!["create", "rolebindings", "-n", ns],
        vec!["create", "clusterroles"],
        vec!["create", "clusterrolebindings"],
        vec!["escalate", "clusterroles"],
        vec!["bind", "clusterroles"],
        vec!["list", "customresourcedefinitions"],
        vec!["update", "customresourcedefinitions"],
    ];
    assert_denied(&env, &sa, &denied);
}

/// A control plane of its own: an operator in the chart's default mode sees every namespace,
/// and on the shared plane it would reconcile other tests' objects beside their operators.
static CLUSTER_WIDE: OnceCell<ControlPlane> = OnceCell::const_new();

/// The arguments of the rendered Deployment's operator container, with the admin server moved
/// to a free loopback port (the pod's `0.0.0.0:8080` is no address to take on a shared host).
fn deployment_args(rendered: &str) -> Vec<String> {
    let deployment = docs(rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    args.as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .map(|a| match a.starts_with("--admin-addr=") {
            true => format!("--admin-addr=127.0.0.1:{}", common::free_port()),
            false => a,
        })
        .collect()
}

#[tokio::test]
async fn the_operator_works_in_the_charts_default_mode_across_namespaces() {
    let plane = CLUSTER_WIDE
        .get_or_init(|| async {
            ControlPlane::start(Options {
                log_dir: Some(repo().join("target/control-plane-logs/chart-cluster-wide")),
                crds: vec![repo().join("crds")],
                ..Options::default()
            })
            .await
            .expect("a control plane for the cluster-wide operator")
        })
        .await;
    let first = TestEnv::on(plane, "wide-a").await;
    let second = TestEnv::on(plane, "wide-b").await;
    let release = plane.namespace("hotconf-cluster").await.unwrap();
    // The chart's defaults, untouched: no watchNamespaces, so a ClusterRole and no
    // `--namespaces` argument.
    let rendered = render(&["-n", &release, "--name", "wide"]);
    assert!(kinds(&rendered).contains(&"ClusterRole/wide-hotconf".to_string()));
    let args = deployment_args(&rendered);
    assert!(
        !args.iter().any(|a| a.starts_with("--namespaces")),
        "{args:?}"
    );
    kubectl_apply(&first, &rendered, false);
    let sa = format!("system:serviceaccount:{release}:wide-hotconf");
    let log = plane.log_dir().join("operator-cluster-wide.log");
    let _operator = first.spawn_operator(&sa, &args, &log);
    examples_reconcile(&first).await;
    examples_reconcile(&second).await;

    for env in [&first, &second] {
        let ns = env.ns.as_str();
        assert!(can_i(env, &sa, &["get", "secrets", "-n", ns]));
        assert!(can_i(env, &sa, &["patch", "configmaps", "-n", ns]));
        let denied = [
            vec!["patch", "deployments", "-n", ns],
            vec!["create", "pods", "-n", ns],
            vec!["update", "runtimeconfigs", "-n", ns],
            vec!["create", "clusterrolebindings"],
            vec!["escalate", "clusterroles"],
            vec!["get", "nodes"],
        ];
        assert_denied(env, &sa, &denied);
    }
    // Restart targets (a later feature) switch workload access on.
    let with_workloads = render(&[
        "-n",
        &release,
        "--name",
        "wide",
        "--set",
        "rbac.workloads=true",
    ]);
    assert!(with_workloads.contains("deployments"));
    assert!(!rendered.contains("deployments"));
    // Sharded: every replica a shard of the ring, no leader election, the same Lease access.
    let sharded = render(&[
        "-n",
        &release,
        "--name",
        "wide",
        "--set",
        "replicaCount=3",
        "--set",
        "sharding.controllerRing=hotconf",
    ]);
    assert!(sharded.contains("- --controller-ring=hotconf"), "{sharded}");
    assert!(!sharded.contains("--leader-elect"), "{sharded}");
    assert!(kinds(&sharded).contains(&"Role/wide-hotconf-leader-election".to_string()));
}

fn only_kinds(rendered: &str, keep: &[&str]) -> String {
    docs(rendered)
        .into_iter()
        .filter(|d| keep.contains(&d["kind"].as_str().unwrap_or("")))
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[tokio::test]
async fn the_webhook_renders_passes_a_dry_run_and_gets_only_its_secret() {
    let env = TestEnv::new("chart-webhook").await;
    let release = env.plane.namespace("hotconf-hooks").await.unwrap();
    let rendered = render(&[
        "-n",
        &release,
        "--name",
        "hooks",
        "--set",
        "webhook.enabled=true",
    ]);
    let found = kinds(&rendered);
    for expected in [
        "Service/hooks-hotconf-webhook",
        "ValidatingWebhookConfiguration/hooks-hotconf",
        "MutatingWebhookConfiguration/hooks-hotconf",
        "Role/hooks-hotconf-webhook-certs",
        "ClusterRole/hooks-hotconf-webhook",
    ] {
        assert!(
            found.contains(&expected.to_string()),
            "{expected} not in {found:?}"
        );
    }
    for hook in docs(&rendered).iter().filter(|d| {
        d["kind"]
            .as_str()
            .unwrap_or("")
            .ends_with("WebhookConfiguration")
    }) {
        let w = &hook["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["timeoutSeconds"], 5);
        assert!(w["namespaceSelector"]["matchExpressions"].is_sequence());
    }
    assert!(rendered.contains("- --webhook-secret=hooks-hotconf-webhook-tls"));
    // A dry run of everything (nothing registered for real: it would intercept other tests).
    assert_dry_run_accepts_all(&env, &rendered);

    // The RBAC for real: the certificate Secret and the two configurations, nothing more.
    let rbac = only_kinds(
        &rendered,
        &[
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
        ],
    );
    kubectl_apply(&env, &rbac, false);
    let sa = format!("system:serviceaccount:{release}:hooks-hotconf");
    let secret = "secrets/hooks-hotconf-webhook-tls";
    assert!(can_i(&env, &sa, &["update", secret, "-n", &release]));
    assert!(can_i(&env, &sa, &["create", "secrets", "-n", &release]));
    assert!(can_i(
        &env,
        &sa,
        &["patch", "validatingwebhookconfigurations/hooks-hotconf"]
    ));
    assert!(can_i(
        &env,
        &sa,
        &["patch", "mutatingwebhookconfigurations/hooks-hotconf"]
    ));
    assert!(!can_i(
        &env,
        &sa,
        &["patch", "validatingwebhookconfigurations/someone-elses"]
    ));
    assert!(!can_i(
        &env,
        &sa,
        &["create", "validatingwebhookconfigurations"]
    ));
    assert!(!can_i(
        &env,
        &sa,
        &["delete", "validatingwebhookconfigurations/hooks-hotconf"]
    ));

    // cert-manager instead: the CA is injected, the certificate mounted.
    kubectl_apply(
        &env,
        &std::fs::read_to_string(repo().join("tests/fixtures/cert-manager-crds.yaml")).unwrap(),
        false,
    );
    eventually(30, "the cert-manager CRDs to be served", || async {
        env.kubectl_raw(&["get", "certificates,issuers"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let with_cm = render(&[
        "-n",
        &env.ns,
        "--name",
        "cm",
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.certManager.enabled=true",
    ]);
    assert!(with_cm.contains(&format!(
        "cert-manager.io/inject-ca-from: {}/cm-hotconf-webhook",
        env.ns
    )));
    assert!(with_cm.contains("- --webhook-cert-dir=/etc/hotconf/webhook"));
    assert!(!kinds(&with_cm).contains(&"Role/cm-hotconf-webhook-certs".to_string()));
    assert_dry_run_accepts_all(&env, &with_cm);
}
