//! The client library (`hotconf::client`): whole-document reads under heavy swapping, the
//! value priorities (environment > projected value > default), the SPEC.md §3 flag vectors,
//! maintenance, and the typed PoolBudget views with their pressure levels.

mod agent_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_common::{doc, doc_value, until_revision, verify};
use hotconf::agent::volume::kubelet_write;
use hotconf::client::{ClientError, Config, EvictionPolicy, Kind, PressureLevel};
use hotconf::crd::PoolBudget;
use hotconf::document;
use serde_json::{Value, json};

/// A document in which every value is `n`: a reader that sees two different numbers saw a mix.
fn uniform(n: u64) -> Value {
    let values: serde_json::Map<String, Value> =
        (0..32).map(|i| (format!("k{i}"), json!(n))).collect();
    json!({"values": values, "featureFlags": {}, "maintenance": {"enabled": false, "reason": "", "until": null}})
}

#[test]
fn concurrent_readers_never_see_a_mix_during_ten_thousand_swaps() {
    let config = Config::options()
        .env_lookup(|_| None)
        .from_value(uniform(0));
    let calls = Arc::new(AtomicU64::new(0));
    let _sub = {
        let calls = calls.clone();
        config.subscribe("k7", move |_| {
            calls.fetch_add(1, Ordering::Relaxed);
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (config, stop) = (config.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let snap = config.snapshot();
                    let first: u64 = snap.get("k0").unwrap();
                    for i in 1..32 {
                        let v: u64 = snap.get(&format!("k{i}")).unwrap();
                        assert_eq!(v, first, "a mix of documents {first} and {v}");
                    }
                    assert!(first >= last, "went back from {last} to {first}");
                    last = first;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let started = Instant::now();
    for n in 1..=10_000 {
        config.publish(uniform(n), Some(n as i64));
    }
    let swaps = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(config.get::<u64>("k31").unwrap(), 10_000);
    assert_eq!(config.revision(), Some(10_000));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        10_000,
        "one callback per change of k7"
    );
    assert!(reads > 1_000, "{reads} reads");
    eprintln!("10000 swaps in {swaps:?} with {reads} whole-document reads alongside");
}

/// The handle follows a kubelet-style volume: every swap becomes visible whole, a corrupt
/// document is refused while the last good one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_follows_kubelet_swaps_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    kubelet_write(&dir, "0", &[("config.yaml", &doc(0, "client"))]).unwrap();
    let config = Config::options()
        .env_lookup(|_| None)
        .watch_dir(&dir)
        .await
        .unwrap();
    assert_eq!(config.get::<u64>("seq").unwrap(), 0);
    assert_eq!(config.snapshot().kind(), Kind::RuntimeConfig);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (config, stop) = (config.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let snap = config.snapshot();
                let text = document::render(snap.value(), hotconf::crd::Format::Yaml);
                verify(&text).expect("a whole document");
                reads += 1;
            }
            reads
        })
    };
    let mut changes = config.changes();
    for n in 1..=300u64 {
        kubelet_write(&dir, &n.to_string(), &[("config.yaml", &doc(n, "client"))]).unwrap();
        tokio::time::timeout(
            Duration::from_secs(15),
            changes.wait_for(|_| config.get::<u64>("seq").ok() == Some(n)),
        )
        .await
        .unwrap_or_else(|_| panic!("swap {n} not visible"))
        .unwrap();
    }
    kubelet_write(&dir, "bad", &[("config.yaml", "values: [\n")]).unwrap();
    tokio::time::timeout(Duration::from_secs(15), async {
        while config.last_error().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        config.get::<u64>("seq").unwrap(),
        300,
        "the last good document stays"
    );
    assert_eq!(config.snapshot().value(), &doc_value(300, "client"));
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 300);
}

// The stamp the operator puts on the projection of `doc` as revision `revision` of RuntimeConfig
// shop/app.
fn stamp_of(doc: &Value, revision: i64, restart_keys: &[&str]) -> hotconf::projection::Stamp {
    hotconf::projection::Stamp {
        kind: "RuntimeConfig",
        owner_name: "app".into(),
        namespace: "shop".into(),
        owner: Default::default(),
        revision,
        hash: document::hash(doc),
        restart_keys: restart_keys.iter().map(|k| k.to_string()).collect(),
    }
}

// The projected ConfigMap and Secret of revision `revision` (password `password`), as the
// operator builds them, written as kubelet volumes at `cm` and `secret` (either may be left out).
fn project_with_secret(
    cm: Option<&std::path::Path>,
    secret: Option<&std::path::Path>,
    revision: i64,
    password: &str,
) {
    use hotconf::projection::{self, ResolvedTarget};
    let doc = json!({
        "values": {"port": 5432},
        "secrets": {"db_password": {"secretKeyRef": {"name": "creds", "key": "password"},
                                    "fingerprint": format!("f{revision}")}},
        "featureFlags": {}, "maintenance": {"enabled": false, "reason": "", "until": null},
    });
    let target = ResolvedTarget::resolve(None, "app");
    let stamp = stamp_of(&doc, revision, &[]);
    let stampname = revision.to_string();
    if let Some(dir) = cm {
        let data = projection::config_map(&doc, &target, &stamp).data.unwrap();
        hotconf::agent::volume::kubelet_write_data(dir, &stampname, &data).unwrap();
    }
    if let Some(dir) = secret {
        let values = BTreeMap::from([("db_password".to_string(), password.to_string())]);
        let data: BTreeMap<String, String> = projection::secret(&values, &target, &stamp)
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        hotconf::agent::volume::kubelet_write_data(dir, &stampname, &data).unwrap();
    }
}

/// With the projected Secret followed too, `get` finds a sensitive value; a rotation (a new
/// revision) swaps the document and its value together, and a document whose Secret has not
/// arrived waits for it instead of pairing with the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_values_are_read_from_the_projected_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let (cm, secret) = (tmp.path().join("cm"), tmp.path().join("secret"));
    project_with_secret(Some(&cm), Some(&secret), 1, "pw-1");
    let config = Config::options()
        .env_lookup(|_| None)
        .secret_dir(&secret)
        .watch_dir(&cm)
        .await
        .unwrap();
    assert_eq!(config.get::<String>("db_password").unwrap(), "pw-1");
    assert_eq!(config.get::<u64>("port").unwrap(), 5432);
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _sub = {
        let heard = heard.clone();
        config.subscribe("db_password", move |v| {
            heard.lock().unwrap().push(v.cloned())
        })
    };
    assert!(
        !format!("{config:?}").contains("pw-1"),
        "the handle's Debug shows no value"
    );

    project_with_secret(Some(&cm), None, 2, "pw-2");
    tokio::time::timeout(Duration::from_secs(15), async {
        while !config
            .last_error()
            .is_some_and(|e| e.contains("waiting for the projected Secret"))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the new document waits for its Secret");
    assert_eq!(config.revision(), Some(1));
    assert_eq!(config.get::<String>("db_password").unwrap(), "pw-1");

    project_with_secret(None, Some(&secret), 2, "pw-2");
    until_revision(&config, 2, Duration::from_secs(15), "with its Secret").await;
    assert_eq!(config.get::<String>("db_password").unwrap(), "pw-2");
    // The subscriber is called just after the swap: wait for it.
    tokio::time::timeout(Duration::from_secs(15), async {
        while heard.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the subscriber to hear of the new value");
    assert_eq!(*heard.lock().unwrap(), [Some(json!("pw-2"))]);

    // Without the Secret followed, the document reads as projected: no sensitive value.
    let plain = Config::options()
        .env_lookup(|_| None)
        .watch_dir(&cm)
        .await
        .unwrap();
    assert!(matches!(
        plain.get::<String>("db_password"),
        Err(ClientError::Missing { .. })
    ));
}

/// The handle knows which keys changed since it opened need a restart: the projection's
/// metadata names the `requiresRestart` paths, and `pending_restart` compares them with the
/// document the process started on (a change made and undone needs none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_restart_names_restart_keys_changed_since_start() {
    use hotconf::projection::{self, ResolvedTarget};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cm");
    let write = |revision: i64, workers: u64, interval: u64| {
        let doc = json!({"values": {"workers": workers, "interval": interval},
                         "featureFlags": {}, "maintenance": {"enabled": false, "reason": "", "until": null}});
        let stamp = stamp_of(&doc, revision, &["values.workers"]);
        let data = projection::config_map(&doc, &ResolvedTarget::resolve(None, "app"), &stamp)
            .data
            .unwrap();
        hotconf::agent::volume::kubelet_write_data(&dir, &revision.to_string(), &data).unwrap();
    };
    write(1, 4, 30);
    let config = Config::options()
        .env_lookup(|_| None)
        .watch_dir(&dir)
        .await
        .unwrap();
    assert!(config.pending_restart().is_empty() && !config.is_restart_required());
    for (revision, workers, interval, pending) in [
        (2, 8, 30, vec!["values.workers"]),
        (3, 8, 60, vec!["values.workers"]),
        (4, 4, 60, vec![]),
    ] {
        write(revision, workers, interval);
        until_revision(&config, revision, Duration::from_secs(15), "written").await;
        assert_eq!(config.pending_restart(), pending, "revision {revision}");
        assert_eq!(
            config.get::<u64>("workers").unwrap(),
            workers,
            "hot values are live"
        );
    }
}

/// The handle counts what the application does: reads per key by source (a miss is a read that
/// found nothing), swaps, live subscriptions and flag evaluations by result and reason, and
/// exposes the same counts as Prometheus metrics in the application's registry; distinct
/// names are bounded.
#[test]
fn usage_is_counted_and_exposed_as_metrics() {
    let config = Config::options()
        .env_lookup(env(&[("HOTCONF_LEVEL", "7")]))
        .default_value("timeout", 5)
        .from_value(json!({
            "values": {"port": 80},
            "featureFlags": {
                "off": {"enabled": false, "rolloutPercentage": 100, "allow": [], "deny": []},
                "beta": {"enabled": true, "rolloutPercentage": 0, "allow": ["vip"], "deny": ["mallory"]},
            },
            "maintenance": {"enabled": false, "reason": "", "until": null},
        }));
    let _: u64 = config.get("port").unwrap();
    let _: u64 = config.get("port").unwrap();
    let _: u64 = config.get("level").unwrap();
    let _: u64 = config.get("timeout").unwrap();
    assert!(config.get::<u64>("nope").is_err());
    let sub = config.subscribe("port", |_| {});
    assert_eq!(config.stats().subscriptions, 1);
    config.publish(
        json!({"values": {"port": 81}, "featureFlags": {}, "maintenance": {}}),
        Some(2),
    );
    config.publish(
        json!({"values": {"port": 80}, "featureFlags": {
        "off": {"enabled": false, "rolloutPercentage": 100, "allow": [], "deny": []},
        "beta": {"enabled": true, "rolloutPercentage": 0, "allow": ["vip"], "deny": ["mallory"]}},
        "maintenance": {}}),
        Some(3),
    );
    drop(sub);
    assert!(!config.is_enabled("off", "anyone"));
    assert!(config.is_enabled("beta", "vip"));
    assert!(!config.is_enabled("beta", "mallory"));
    assert!(!config.is_enabled("beta", "someone"));
    assert!(!config.is_enabled("ghost", "someone"));

    let stats = config.stats();
    assert_eq!(
        (stats.reads, stats.misses, stats.swaps, stats.subscriptions),
        (5, 1, 2, 0)
    );
    assert_eq!(
        stats.hits,
        BTreeMap::from([
            ("level".into(), 1),
            ("port".into(), 2),
            ("timeout".into(), 1)
        ])
    );
    assert_eq!(stats.missed, BTreeMap::from([("nope".into(), 1)]));
    let flag = |name: &str| stats.flags[name].clone();
    assert_eq!(flag("off"), BTreeMap::from([(("off", "disabled"), 1)]));
    assert_eq!(
        flag("beta"),
        BTreeMap::from([
            (("on", "allow"), 1),
            (("off", "deny"), 1),
            (("off", "rollout"), 1)
        ])
    );
    assert_eq!(flag("ghost"), BTreeMap::from([(("off", "unknown"), 1)]));

    let mut registry = prometheus_client::registry::Registry::default();
    config.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"hotconf_client_reads_total{key="port",source="document"} 2"#,
        r#"hotconf_client_reads_total{key="level",source="environment"} 1"#,
        r#"hotconf_client_reads_total{key="timeout",source="default"} 1"#,
        r#"hotconf_client_reads_total{key="nope",source="missing"} 1"#,
        r#"hotconf_client_flag_evaluations_total{flag="beta",result="on",reason="allow"} 1"#,
        "hotconf_client_swaps_total 2",
        "hotconf_client_subscriptions 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }

    // Computed keys cannot grow the counts without bound.
    for i in 0..(hotconf::client::MAX_NAMES + 100) {
        let _ = config.get::<u64>(&format!("k{i}"));
    }
    let stats = config.stats();
    assert!(stats.missed.len() <= hotconf::client::MAX_NAMES + 1);
    assert!(stats.missed[hotconf::client::OTHER] >= 100);
}

/// A handle with a cache file starts from the last good document when no source answers (and
/// says so), swaps in what a source gives later, and refuses a damaged cache with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_without_a_source_uses_the_last_good_document() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache) = (tmp.path().join("cm"), tmp.path().join("state/cache.json"));
    kubelet_write(&dir, "1", &[("config.yaml", &doc(1, "cache"))]).unwrap();
    let options = || {
        Config::options()
            .env_lookup(|_| None)
            .cache_file(&cache)
            .wait(Duration::from_millis(300))
    };
    let first = options().watch_dir(&dir).await.unwrap();
    assert!(!first.snapshot().is_cached());
    let written = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&cache) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the cache file");
    assert!(written.contains("\"checksum\""));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    drop(first);

    // The volume is gone: the handle opens on the cache, and says so.
    std::fs::remove_dir_all(&dir).unwrap();
    let cold = options().watch_dir(&dir).await.unwrap();
    assert!(cold.snapshot().is_cached());
    assert_eq!(cold.get::<u64>("seq").unwrap(), 1);
    let said = cold.last_error().unwrap();
    assert!(
        said.contains("serving the last good document cached in"),
        "{said}"
    );
    // The source comes back: its document replaces the cached one.
    kubelet_write(&dir, "2", &[("config.yaml", &doc(2, "cache"))]).unwrap();
    let mut changes = cold.changes();
    tokio::time::timeout(
        Duration::from_secs(15),
        changes.wait_for(|_| cold.get::<u64>("seq").ok() == Some(2)),
    )
    .await
    .expect("the source's document")
    .unwrap();
    assert!(!cold.snapshot().is_cached() && cold.last_error().is_none());
    drop(cold);

    // A damaged cache is not served.
    std::fs::remove_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&cache).unwrap();
    std::fs::write(&cache, text.replace("\"seq\":2", "\"seq\":3")).unwrap();
    let err = options().watch_dir(&dir).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot be used") && err.contains("checksum"),
        "{err}"
    );
}

/// With both sources, an API that cannot be reached does not hold the handle up: the volume is
/// used at once, as the agent uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_fall_back_to_the_volume_when_the_api_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cm");
    kubelet_write(&dir, "1", &[("config.yaml", &doc(7, "both"))]).unwrap();
    // Nothing listens on port 1.
    let mut config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    config.connect_timeout = Some(Duration::from_millis(200));
    let client = kube::Client::try_from(config).unwrap();
    let handle = Config::options()
        .env_lookup(|_| None)
        .wait(Duration::from_secs(20))
        .watch(client, "shop", "app", &dir)
        .await
        .unwrap();
    assert_eq!(handle.get::<u64>("seq").unwrap(), 7);
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn environment_beats_projected_value_beats_default() {
    let document = json!({"values": {"check_interval": 30, "strategy": "AGGRESSIVE", "nested": {"a": {"b": 2}}}});
    let open = |vars: &[(&str, &str)]| {
        Config::options()
            .env_lookup(env(vars))
            .default_value("check_interval", 60)
            .default_value("timeout_ms", 500)
            .defaults(BTreeMap::from([("label".to_string(), json!("none"))]))
            .from_value(document.clone())
    };
    let plain = open(&[]);
    assert_eq!(
        plain.get::<u64>("check_interval").unwrap(),
        30,
        "value over default"
    );
    assert_eq!(
        plain.get::<u64>("timeout_ms").unwrap(),
        500,
        "default when no value"
    );
    assert_eq!(plain.get::<String>("label").unwrap(), "none");
    assert_eq!(
        plain.get::<u64>("nested.a.b").unwrap(),
        2,
        "dotted path into values"
    );
    assert!(matches!(
        plain.get::<u64>("missing"),
        Err(ClientError::Missing { env, .. }) if env == "HOTCONF_MISSING"
    ));
    assert!(matches!(
        plain.get::<u64>("strategy"),
        Err(ClientError::Type {
            from: "document",
            ..
        })
    ));

    let env_set = open(&[
        ("HOTCONF_CHECK_INTERVAL", "7"),
        ("HOTCONF_TIMEOUT_MS", "250"),
        ("HOTCONF_STRATEGY", "CONSERVATIVE"),
        ("HOTCONF_LABEL", "007"),
        ("HOTCONF_LIST", "[a, b]"),
    ]);
    assert_eq!(
        env_set.get::<u64>("check_interval").unwrap(),
        7,
        "environment over value"
    );
    assert_eq!(
        env_set.get::<u64>("timeout_ms").unwrap(),
        250,
        "environment over default"
    );
    assert_eq!(env_set.get::<String>("strategy").unwrap(), "CONSERVATIVE");
    assert_eq!(
        env_set.get::<String>("label").unwrap(),
        "007",
        "falls back to the text"
    );
    assert_eq!(env_set.get::<Vec<String>>("list").unwrap(), vec!["a", "b"]);
    assert!(matches!(
        open(&[("HOTCONF_CHECK_INTERVAL", "soon")]).get::<u64>("check_interval"),
        Err(ClientError::Type {
            from: "environment",
            ..
        })
    ));

    // A PoolBudget document: dotted paths, and the same override naming.
    let pb = Config::options()
        .env_lookup(env(&[("HOTCONF_POOLS_REDIS_MAXCONNECTIONS", "99")]))
        .from_value(document::pool_budget(&Default::default()).document);
    assert_eq!(pb.get::<u32>("pools.database.maxConnections").unwrap(), 20);
    assert_eq!(pb.get::<u32>("pools.redis.maxConnections").unwrap(), 99);
}

/// The same override through the real process environment: this test runs itself again as a
/// child with `HOTCONF_CHECK_INTERVAL` set.
#[test]
fn the_process_environment_overrides_values() {
    if std::env::var_os("HOTCONF_CLIENT_CHILD").is_some() {
        let config = Config::from_value(json!({"values": {"check_interval": 30}}));
        assert_eq!(config.get::<u64>("check_interval").unwrap(), 7);
        assert_eq!(config.get::<String>("check_interval").unwrap(), "7");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_process_environment_overrides_values",
            "--nocapture",
        ])
        .env("HOTCONF_CLIENT_CHILD", "1")
        .env("HOTCONF_CHECK_INTERVAL", "7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
fn feature_flags_reproduce_the_spec_vectors() {
    assert_eq!(
        hotconf::feature_flags::fnv1a32(b"new_ui/user-42"),
        0x195f_da57
    );
    assert_eq!(
        hotconf::feature_flags::fnv1a32(b"new_ui/user-43"),
        0x185f_d8c4
    );
    assert_eq!(
        hotconf::feature_flags::fnv1a32(b"beta_features/alice"),
        0xd3bd_7048
    );
    let flags = |pct: u32| {
        Config::from_value(json!({"values": {}, "featureFlags": {
            "new_ui": {"enabled": true, "rolloutPercentage": 25, "allow": ["user-43"], "deny": ["user-1"]},
            "beta_features": {"enabled": true, "rolloutPercentage": pct, "allow": [], "deny": []},
            "off": {"enabled": false, "rolloutPercentage": 100, "allow": ["user-42"], "deny": []},
        }}))
    };
    let c = flags(25);
    assert!(c.is_enabled("new_ui", "user-42"), "bucket 15 < 25");
    assert!(c.is_enabled("new_ui", "user-43"), "bucket 96, but allowed");
    assert!(!c.is_enabled("new_ui", "user-1"), "denied");
    assert!(c.is_enabled("beta_features", "alice"), "bucket 24 < 25");
    assert!(
        !flags(24).is_enabled("beta_features", "alice"),
        "bucket 24 is not < 24"
    );
    assert!(
        !c.is_enabled("off", "user-42"),
        "disabled is off for everyone"
    );
    assert!(
        !c.is_enabled("unknown", "user-42"),
        "an unknown flag is off"
    );
    let plain = Config::from_value(
        json!({"featureFlags": {"new_ui": {"enabled": true, "rolloutPercentage": 25}}}),
    );
    assert!(!plain.is_enabled("new_ui", "user-43"), "bucket 96 >= 25");
}

#[test]
fn maintenance_state_and_its_end() {
    let now = chrono::Utc::now();
    let at = |until: chrono::DateTime<chrono::Utc>| {
        Config::from_value(json!({"values": {}, "maintenance": {
            "enabled": true, "reason": "database upgrade", "until": until.to_rfc3339()}}))
    };
    let m = at(now + chrono::Duration::hours(1)).maintenance();
    assert!(m.enabled);
    assert_eq!(m.reason, "database upgrade");
    assert!(m.until.is_some());
    assert!(
        !at(now - chrono::Duration::seconds(1)).maintenance().enabled,
        "until has passed"
    );
    let open = Config::from_value(
        json!({"values": {}, "maintenance": {"enabled": true, "reason": "", "until": null}}),
    );
    assert!(open.maintenance().enabled, "no end");
    assert!(
        !Config::from_value(json!({"values": {}}))
            .maintenance()
            .enabled
    );
}

#[test]
fn pool_budget_views_and_pressure_levels() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool-budget.yaml"),
    )
    .unwrap();
    let pb: PoolBudget = serde_yaml::from_str(&text).unwrap();
    let config = Config::from_value(document::pool_budget(&pb.spec).document);
    assert_eq!(config.snapshot().kind(), Kind::PoolBudget);
    let budget = config.budget().unwrap();
    assert_eq!(budget.max_concurrent_operations, 120);
    assert_eq!(budget.max_memory_mb, 1024);
    assert_eq!(
        budget.max_request_rate_per_minute, 300,
        "defaults filled in"
    );
    let pools = config.pools().unwrap();
    assert_eq!(pools.database.max_connections, 40);
    assert_eq!(pools.database.max_lifetime, Duration::from_secs(3600));
    assert_eq!(pools.redis.retry_delay, Duration::from_millis(250));
    assert_eq!(pools.http.timeout, Duration::from_secs(15));
    assert_eq!(pools.cache.ttl, Duration::from_secs(600));
    assert_eq!(pools.cache.eviction_policy, EvictionPolicy::Lfu);

    // The example's thresholds: 0.6 / 0.8 / 0.95.
    for (u, level) in [
        (0.0, PressureLevel::None),
        (0.59, PressureLevel::None),
        (0.6, PressureLevel::Light),
        (0.79, PressureLevel::Light),
        (0.8, PressureLevel::Moderate),
        (0.95, PressureLevel::Heavy),
        (1.0, PressureLevel::Heavy),
    ] {
        assert_eq!(config.pressure_level(u), level, "utilization {u}");
    }
    // The defaults: 0.70 / 0.85 / 0.95.
    let defaults = Config::from_value(document::pool_budget(&Default::default()).document);
    assert_eq!(defaults.pressure_level(0.69), PressureLevel::None);
    assert_eq!(defaults.pressure_level(0.70), PressureLevel::Light);
    assert_eq!(defaults.pressure_level(0.85), PressureLevel::Moderate);
    assert_eq!(defaults.pressure_level(0.95), PressureLevel::Heavy);
    assert!(matches!(
        Config::from_value(json!({"values": {}})).budget(),
        Err(ClientError::NotPoolBudget)
    ));
}

/// The OpenFeature Rust SDK (`open-feature` crate) evaluates hotconf's flags through
/// `HotconfProvider`: booleans, numbers, strings and objects with their variant, reason and
/// revision, a new revision's value at once, and the SDK's error codes.
#[tokio::test]
async fn the_openfeature_sdk_reads_flags_through_the_provider() {
    use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason, OpenFeature};
    let flags = |classic: &str| {
        json!({
            "values": {},
            "featureFlags": {
                "new_ui": {"enabled": true, "rolloutPercentage": 100, "allow": ["vip"], "deny": []},
                "checkout_flow": {"variants": {"classic": classic, "streamlined": "v2"}, "defaultVariant": "classic",
                    "fractional": {"classic": 50, "streamlined": 50}, "targets": {"streamlined": ["beta-1"]},
                    "enabled": true, "bucketing": "flagd"},
                "limit": {"variants": {"low": 10, "high": 100}, "defaultVariant": "low", "fractional": {},
                    "targets": {"high": ["vip"]}, "enabled": true, "bucketing": "flagd"},
                "pricing": {"variants": {"a": {"discount": 0}, "b": {"discount": 15}}, "defaultVariant": "b",
                    "fractional": {}, "targets": {}, "enabled": true, "bucketing": "flagd"},
            },
            "maintenance": {"enabled": false, "reason": "", "until": null},
        })
    };
    let config = Config::options().env_lookup(|_| None).from_value(json!({}));
    config.publish(flags("v1"), Some(3));
    let provider = hotconf::client::HotconfProvider::new(config.clone());
    let mut events = provider.events();
    let client = {
        let mut api = OpenFeature::singleton_mut().await;
        api.set_provider(provider).await;
        api.create_client()
    };
    let beta = EvaluationContext::default().with_targeting_key("beta-1");
    let vip = EvaluationContext::default().with_targeting_key("vip");
    let d = client
        .get_string_details("checkout_flow", Some(&beta), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value.as_str(), d.variant.as_deref(), d.reason),
        (
            "v2",
            Some("streamlined"),
            Some(EvaluationReason::TargetingMatch)
        )
    );
    assert!(
        format!("{:?}", d.flag_metadata).contains("Int(3)"),
        "{:?}",
        d.flag_metadata
    );
    assert!(
        client
            .get_bool_value("new_ui", Some(&vip), None)
            .await
            .unwrap()
    );
    assert_eq!(
        client
            .get_int_value("limit", Some(&vip), None)
            .await
            .unwrap(),
        100
    );
    let pricing = client
        .get_struct_details::<open_feature::StructValue>("pricing", Some(&vip), None)
        .await
        .unwrap();
    assert_eq!(
        pricing.value.fields["discount"],
        open_feature::Value::Int(15)
    );
    assert_eq!(pricing.reason, Some(EvaluationReason::Static));

    let code =
        |r: Result<_, open_feature::EvaluationError>| r.map(|_: String| ()).unwrap_err().code;
    assert_eq!(
        code(client.get_string_value("ghost", Some(&vip), None).await),
        EvaluationErrorCode::FlagNotFound
    );
    assert_eq!(
        client
            .get_bool_value("checkout_flow", Some(&vip), None)
            .await
            .unwrap_err()
            .code,
        EvaluationErrorCode::TypeMismatch
    );
    assert_eq!(
        code(client.get_string_value("checkout_flow", None, None).await),
        EvaluationErrorCode::TargetingKeyMissing
    );

    // A new revision is what the next evaluation sees, and the provider announces it with
    // the flag that changed.
    config.publish(flags("v1-bis"), Some(4));
    assert_eq!(
        events.next().await,
        Some(hotconf::client::ProviderEvent {
            revision: Some(4),
            flags_changed: vec!["checkout_flow".into()],
        })
    );
    let nobody = EvaluationContext::default().with_targeting_key("someone");
    let d = client
        .get_string_details("checkout_flow", Some(&nobody), None)
        .await
        .unwrap();
    let expected = match hotconf::feature_flags::fractional(
        "checkout_flow",
        "someone",
        &[("classic", 50), ("streamlined", 50)],
    ) {
        Some("classic") => "v1-bis",
        _ => "v2",
    };
    assert_eq!(d.value, expected);
    assert_eq!(d.reason, Some(EvaluationReason::Split));

    // A change of values only is a configuration change that names no flag.
    let mut values_only = flags("v1-bis");
    values_only["values"] = json!({"timeout": 5});
    config.publish(values_only, Some(5));
    assert_eq!(
        events.next().await,
        Some(hotconf::client::ProviderEvent {
            revision: Some(5),
            flags_changed: vec![],
        })
    );
}
