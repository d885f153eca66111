//! Admission and rollback figures against the real control plane:
//! 1. validation latency through the webhook: dry-run creates through the API server with the
//!    validating and mutating webhooks registered, against the same requests in a namespace the
//!    webhooks do not select (the floor), and the webhook's own answer time from its histogram;
//! 2. automatic rollback: time from the first failing reload to the rollback being projected.
//!
//! `make bench` runs it; the figures go to stdout and `target/bench/admission.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hotconf::crd::RuntimeConfig;
use hotconf::dev::control_plane::{ControlPlane, OPERATOR_USER, Options, Process};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const REQUESTS: usize = 400;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> std::path::PathBuf {
    let release = repo().join("target/release/hotconf");
    if release.exists() {
        release
    } else {
        repo().join("target/debug/hotconf")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rtc(name: &str, v: i64) -> RuntimeConfig {
    serde_json::from_value(json!({
        "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
        "metadata": {"name": name},
        "spec": {
            "schema": {"v": {"type": "integer", "minimum": 0, "maximum": 1000000}},
            "values": {"v": v}
        }
    }))
    .unwrap()
}

async fn namespace(client: &Client, name: &str, labels: Value) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn dry_run_latencies(client: &Client, ns: &str) -> Vec<f64> {
    let api: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let started = Instant::now();
        api.create(&params, &rtc(&format!("probe-{i}"), i as i64))
            .await
            .unwrap();
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// p50/p99 (ms) from a Prometheus histogram's buckets: the upper bound of the bucket the
/// quantile falls in.
fn histogram_quantiles(metrics: &str, name: &str, filter: &str) -> (f64, f64, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in metrics.lines() {
        if !line.starts_with(&format!("{name}_bucket{{")) || !line.contains(filter) {
            continue;
        }
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("+Inf");
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some(entry) => entry.1 += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    let q = |p: f64| {
        let want = (p * total as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(b, _)| b * 1000.0)
            .unwrap_or(f64::NAN)
    };
    (q(0.5), q(0.99), total)
}

async fn webhook_figures(plane: &ControlPlane, client: &Client) -> Value {
    let port = free_port();
    let admin = free_port();
    let name = "hotconf-bench";
    namespace(client, "bench-webhook", json!({"hotconf-bench": "on"})).await;
    namespace(client, "bench-floor", json!({})).await;
    let hook = |path: &str, hook_name: &str| {
        json!({
            "name": hook_name,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/{path}")},
            "rules": [{"apiGroups": ["hotconf.dev"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["runtimeconfigs", "poolbudgets"]}],
            "namespaceSelector": {"matchLabels": {"hotconf-bench": "on"}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        })
    };
    for (kind, path, hook_name) in [
        (
            "ValidatingWebhookConfiguration",
            "validate",
            "validate.hotconf.dev",
        ),
        (
            "MutatingWebhookConfiguration",
            "mutate",
            "attribute.hotconf.dev",
        ),
    ] {
        let body = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                          "metadata": {"name": name}, "webhooks": [hook(path, hook_name)]});
        let resource = kube::api::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    }
    let log = plane.log_dir().join("bench-operator-webhook.log");
    let _operator: Process = plane
        .spawn(
            "hotconf-operator",
            &binary(),
            &[
                "operator".into(),
                "--namespaces=bench-webhook".into(),
                format!("--admin-addr=127.0.0.1:{admin}"),
                "--webhook".into(),
                format!("--webhook-addr=127.0.0.1:{port}"),
                "--webhook-extra-names=127.0.0.1".into(),
                "--webhook-namespace=bench-webhook".into(),
                format!("--webhook-validating-config={name}"),
                format!("--webhook-mutating-config={name}"),
            ],
            OPERATOR_USER,
            &log,
        )
        .unwrap();
    let vapi: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    eventually(60, "the caBundle", || async {
        let cfg = vapi.get(name).await.ok()?;
        cfg.webhooks?
            .first()?
            .client_config
            .ca_bundle
            .as_ref()
            .map(|_| ())
    })
    .await;
    let api: Api<RuntimeConfig> = Api::namespaced(client.clone(), "bench-webhook");
    eventually(60, "the webhook to answer", || async {
        api.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &rtc("warm", 1),
        )
        .await
        .ok()
        .map(|_| ())
    })
    .await;
    // Interleave nothing: the two runs are back to back on the same server, floor first.
    let floor = dry_run_latencies(client, "bench-floor").await;
    let with = dry_run_latencies(client, "bench-webhook").await;
    let metrics = scrape(admin).await;
    let (v50, v99, vcount) = histogram_quantiles(
        &metrics,
        "hotconf_webhook_request_duration_seconds",
        "hook=\"validate\"",
    );
    let (m50, m99, _) = histogram_quantiles(
        &metrics,
        "hotconf_webhook_request_duration_seconds",
        "hook=\"mutate\"",
    );
    json!({
        "requests": REQUESTS,
        "dry_run_create_ms": {
            "with_webhooks": {"p50": percentile(&with, 50.0), "p99": percentile(&with, 99.0)},
            "floor_no_webhooks": {"p50": percentile(&floor, 50.0), "p99": percentile(&floor, 99.0)},
            "added_p99": percentile(&with, 99.0) - percentile(&floor, 99.0),
        },
        "webhook_answer_ms_bucket_upper_bound": {
            "validate": {"p50": v50, "p99": v99, "count": vcount},
            "mutate": {"p50": m50, "p99": m99},
        }
    })
}

async fn rollback_figures(plane: &ControlPlane, client: &Client, rounds: usize) -> Value {
    let ns = "bench-rollback";
    namespace(client, ns, json!({})).await;
    let admin = free_port();
    let _operator = plane
        .spawn(
            "hotconf-operator",
            &binary(),
            &[
                "operator".into(),
                format!("--namespaces={ns}"),
                format!("--admin-addr=127.0.0.1:{admin}"),
            ],
            OPERATOR_USER,
            &plane.log_dir().join("bench-operator-rollback.log"),
        )
        .unwrap();
    let refusals = Arc::new(AtomicUsize::new(0));
    let reload = hotconf::dev::control_plane::reload_stand_in("bad", refusals.clone())
        .await
        .unwrap();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let shop: RuntimeConfig = serde_json::from_value(json!({
        "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig", "metadata": {"name": "shop"},
        "spec": {"values": {"level": "good-0"},
                 "rollout": {"consumerSelector": {"app": "shop"},
                             "autoRollback": {"enabled": true, "maxFailures": 1}}}
    }))
    .unwrap();
    rtcs.create(&PostParams::default(), &shop).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut agents = Vec::new();
    for i in 0..3 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("shop-{i}"), "labels": {"app": "shop"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let dir = plane.dir().join(format!("bench-agent-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        agents.push(
            plane
                .spawn(
                    "hotconf-agent",
                    &binary(),
                    &[
                        "agent".into(),
                        format!("--configmap={ns}/shop"),
                        format!("--output={}", dir.join("config.yaml").display()),
                        format!("--reload-url=http://127.0.0.1:{reload}/reload"),
                        "--reload-retries=1".into(),
                        format!("--admin-addr=127.0.0.1:{}", free_port()),
                        format!("--pod-name=shop-{i}"),
                        format!("--pod-namespace={ns}"),
                    ],
                    hotconf::dev::control_plane::ADMIN_USER,
                    &plane.log_dir().join(format!("bench-agent-{i}.log")),
                )
                .unwrap(),
        );
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let all_updated = |revision: i64| {
        let rtcs = rtcs.clone();
        async move {
            let s = rtcs.get("shop").await.ok()?.status?;
            let c = s.consumers?;
            (c.revision == revision && c.updated == 3 && c.selected == 3).then_some(())
        }
    };
    let mut times = Vec::new();
    let mut revision = 1;
    eventually(120, "3/3 on revision 1", || all_updated(1)).await;
    for round in 0..rounds {
        // A good revision every consumer applies, then a bad one they refuse.
        let patch = |level: String| json!({"spec": {"values": {"level": level}}});
        rtcs.patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(patch(format!("good-{}", round + 1))),
        )
        .await
        .unwrap();
        revision += 1;
        let good = revision;
        eventually(120, "3/3 on the good revision", || all_updated(good)).await;
        let before = refusals.load(Ordering::SeqCst);
        rtcs.patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(patch(format!("bad-{round}"))),
        )
        .await
        .unwrap();
        revision += 1;
        eventually(120, "the first refusal", || async {
            (refusals.load(Ordering::SeqCst) > before).then_some(())
        })
        .await;
        let refused = Instant::now();
        eventually(120, "the rollback projected", || async {
            let cm = cms.get("shop").await.ok()?;
            (cm.annotations().get("hotconf.dev/revision")? == &good.to_string()).then_some(())
        })
        .await;
        times.push(refused.elapsed().as_secs_f64() * 1000.0);
        eventually(120, "3/3 back on the good revision", || all_updated(good)).await;
    }
    drop(agents);
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "rounds": rounds,
        "failing_reload_to_rollback_projected_ms": {
            "p50": percentile(&times, 50.0),
            "max": times.last().copied().unwrap_or(f64::NAN),
        },
        "note": "the operator watches the consumer pods: an agent's refusal reconciles at once"
    })
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let plane = ControlPlane::start(Options {
            controller_manager: false,
            crds: vec![repo().join("crds")],
            log_dir: Some(repo().join("target/bench/logs-admission")),
            ..Options::default()
        })
        .await
        .expect("control plane");
        let client = plane.client().await.unwrap();
        let webhook = webhook_figures(&plane, &client).await;
        let rollback = rollback_figures(&plane, &client, 5).await;
        let d = &webhook["dry_run_create_ms"];
        let w = &webhook["webhook_answer_ms_bucket_upper_bound"];
        let r = &rollback["failing_reload_to_rollback_projected_ms"];
        println!("\nadmission and rollback ({} binary)", if binary().ends_with("release/hotconf") { "release" } else { "debug" });
        println!("| figure | p50 | p99 / max | floor p99 | ratio |");
        println!("|---|---|---|---|---|");
        println!(
            "| dry-run create through both webhooks ({REQUESTS} requests) | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            d["with_webhooks"]["p50"].as_f64().unwrap_or(f64::NAN),
            d["with_webhooks"]["p99"].as_f64().unwrap_or(f64::NAN),
            d["floor_no_webhooks"]["p99"].as_f64().unwrap_or(f64::NAN),
            d["with_webhooks"]["p99"].as_f64().unwrap_or(f64::NAN)
                / d["floor_no_webhooks"]["p99"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "| validating webhook answer (server side, bucket bound) | <= {} ms | <= {} ms | - | - |",
            w["validate"]["p50"], w["validate"]["p99"]
        );
        println!(
            "| failing reload -> automatic rollback projected ({} rounds) | {:.0} ms | {:.0} ms | - | - |",
            rollback["rounds"],
            r["p50"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN)
        );
        let report = json!({"webhook": webhook, "auto_rollback": rollback,
                            "date": chrono::Utc::now().to_rfc3339()});
        let dir = repo().join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admission.json"), serde_json::to_string_pretty(&report).unwrap())
            .unwrap();
        println!("written to target/bench/admission.json");
    });
}
