//! Leader election with two operator processes, and the admin endpoints.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, eventually, free_port};
use hotconf::crd::{ConfigStatus, RuntimeConfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

fn ready_at(status: Option<&ConfigStatus>, revision: i64) -> bool {
    status.is_some_and(|s| {
        s.current_revision == Some(revision)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_revision(env: &TestEnv, name: &str, revision: i64, secs: u64) {
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(secs, &format!("{name} at revision {revision}"), || {
        let (api, cms) = (api.clone(), cms.clone());
        async move {
            let obj = api.get_opt(name).await.ok()??;
            let cm = cms.get_opt(name).await.ok()??;
            (ready_at(obj.status.as_ref(), revision)
                && cm.metadata.annotations?.get("hotconf.dev/revision")? == &revision.to_string())
                .then_some(())
        }
    })
    .await;
}

async fn holder(env: &TestEnv) -> Option<String> {
    Api::<Lease>::namespaced(env.client.clone(), &env.ns)
        .get_opt("hotconf-test")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// Writes by `user` in the test namespace to anything but the Lease.
fn writes(env: &TestEnv, user: &str) -> usize {
    env.plane
        .audit_writes(user)
        .iter()
        .filter(|e| e.namespace == env.ns && e.resource != "leases")
        .count()
}

async fn change(env: &TestEnv, value: i64) -> Instant {
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"v": value}}})),
    )
    .await
    .unwrap();
    Instant::now()
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let env = TestEnv::new("leader").await;
    // Two operator identities, so the audit log tells their writes apart.
    for user in ["alice", "bob"] {
        env.kubectl(&[
            "create",
            "clusterrolebinding",
            &format!("{}-{user}", env.ns),
            "--clusterrole=cluster-admin",
            &format!("--user={user}"),
        ]);
    }
    let args = |id: &str| {
        vec![
            "--leader-elect".to_string(),
            format!("--lease-namespace={}", env.ns),
            "--lease-name=hotconf-test".into(),
            format!("--lease-identity={id}"),
            "--lease-duration=3".into(),
            "--lease-grace=1".into(),
        ]
    };
    let mut alice = env.start_operator_with("alice", &args("alice"));
    let leader = eventually(30, "a leader", || holder(&env)).await;
    assert_eq!(leader, "alice", "the only candidate leads");
    let bob_port = free_port();
    let mut bob = env.start_operator_with("bob", &{
        let mut a = args("bob");
        a.push(format!("--admin-addr=127.0.0.1:{bob_port}"));
        a
    });
    // A follower keeps its watches: it is ready (and live) while they are healthy.
    eventually(30, "the follower's /readyz", || async {
        let (status, _) = try_scrape(bob_port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    assert_eq!(scrape(bob_port, "/healthz").await.0, 200);

    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  values: {v: 1}\n",
    );
    wait_revision(&env, "app", 1, 30).await;
    change(&env, 2).await;
    wait_revision(&env, "app", 2, 30).await;
    assert!(
        writes(&env, "alice") >= 4,
        "the leader projected and wrote status"
    );
    assert_eq!(writes(&env, "bob"), 0, "the follower wrote nothing");
    assert_eq!(holder(&env).await.as_deref(), Some("alice"));

    // SIGKILL: the Lease must expire before bob takes over.
    alice.kill();
    let started = change(&env, 3).await;
    wait_revision(&env, "app", 3, 30).await;
    let after_kill = started.elapsed();
    assert_eq!(holder(&env).await.as_deref(), Some("bob"));
    assert!(writes(&env, "bob") > 0);

    // SIGTERM: bob releases the Lease on the way out, so alice (restarted) takes over at once.
    let mut alice = env.start_operator_with("alice", &args("alice"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&env).await.as_deref(),
        Some("bob"),
        "a newcomer does not preempt"
    );
    let stopping = Instant::now();
    bob.stop();
    let started = change(&env, 4).await;
    wait_revision(&env, "app", 4, 30).await;
    let after_term = stopping.elapsed();
    let _ = started;
    assert_eq!(holder(&env).await.as_deref(), Some("alice"));

    println!(
        "leader failover: after SIGKILL {:.2}s (target 5s), after SIGTERM {:.2}s",
        after_kill.as_secs_f64(),
        after_term.as_secs_f64()
    );
    assert!(
        after_kill < Duration::from_secs(5),
        "SIGKILL failover took {after_kill:?}"
    );
    assert!(
        after_term < after_kill,
        "a clean handover ({after_term:?}) beats an expiry ({after_kill:?})"
    );
    alice.stop();
}

async fn try_scrape(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(scrape(port, path).await)
}

async fn scrape(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn metric(body: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    body.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_after_a_reconcile() {
    let env = TestEnv::new("metrics").await;
    let port = free_port();
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &[format!("--admin-addr=127.0.0.1:{port}")],
    );
    eventually(30, "the admin server", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let (status, body) = scrape(port, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    eventually(30, "/readyz", || async {
        (scrape(port, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    let success = r#"kind="RuntimeConfig",result="success""#;
    let (_, before) = scrape(port, "/metrics").await;
    assert_eq!(metric(&before, "hotconf_leader", ""), 1.0, "{before}");
    let reconciles_before = metric(&before, "hotconf_reconciles_total", success);
    assert!(
        before.contains("hotconf_rollbacks_total{kind=\"RuntimeConfig\",automatic=\"true\"} 0"),
        "{before}"
    );
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  values: {v: 1}\n",
    );
    wait_revision(&env, "app", 1, 30).await;
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: bad}\nspec:\n  featureFlags: {x: {enabled: true, allow: [a], deny: [a]}}\n",
    );
    let (_, after) = eventually(30, "the metrics to move", || async {
        let (status, body) = scrape(port, "/metrics").await;
        (metric(
            &body,
            "hotconf_validation_failures_total",
            r#"kind="RuntimeConfig""#,
        ) >= 1.0)
            .then_some((status, body))
    })
    .await;
    assert!(
        metric(&after, "hotconf_reconciles_total", success) > reconciles_before,
        "{after}"
    );
    // Every reconcile that finds the spec invalid counts, not only the first: an annotation
    // makes another one, with the same errors.
    let failures = metric(
        &after,
        "hotconf_validation_failures_total",
        r#"kind="RuntimeConfig""#,
    );
    env.kubectl(&["annotate", "rtc/bad", "note=again"]);
    eventually(30, "the second invalid reconcile to count", || async {
        let (_, body) = scrape(port, "/metrics").await;
        (metric(
            &body,
            "hotconf_validation_failures_total",
            r#"kind="RuntimeConfig""#,
        ) > failures)
            .then_some(())
    })
    .await;
    assert!(
        metric(
            &after,
            "hotconf_revisions_projected_total",
            r#"kind="RuntimeConfig""#
        ) >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("hotconf_reconcile_duration_seconds_bucket{"),
        "{after}"
    );
    assert!(
        after.contains("hotconf_watch_restarts_total{kind=\"PoolBudget\"} 0"),
        "series exist before they move: {after}"
    );
}
