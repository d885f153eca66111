//! The fault proxy of the chaos suite (`hotconf::dev::fault_proxy`): a kube client through it
//! sees each injected fault as it says, and requests without faults pass unchanged.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use futures::StreamExt as _;
use hotconf::dev::fault_proxy::FaultProxy;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};

async fn through(env: &TestEnv) -> (FaultProxy, Client) {
    let proxy = env.plane.fault_proxy().await.expect("the fault proxy");
    let client = client_via(env, &proxy, true).await;
    (proxy, client)
}

/// An admin client through `proxy`; `retry`: kube's default retries of 429, 503 and 504.
async fn client_via(env: &TestEnv, proxy: &FaultProxy, retry: bool) -> Client {
    let mut config = env.plane.config().await.expect("admin config");
    config.cluster_url = proxy.url().parse().unwrap();
    config.default_retry = retry;
    Client::try_from(config).unwrap()
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .unwrap()
}

/// The next ADDED object's name (`Some(None)`: the stream ended), or `None` after 3 s.
async fn next_added(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> Option<Option<String>> {
    tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(event) = stream.next().await {
            if let Ok(WatchEvent::Added(cm)) = event {
                return Some(cm.metadata.name.unwrap_or_default());
            }
        }
        None
    })
    .await
    .ok()
}

fn code(result: Result<impl Sized, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn conflicts_hit_writes_only_and_error_bursts_hit_the_next_requests() {
    let env = TestEnv::new("proxy-errors").await;
    let (proxy, retrying) = through(&env).await;
    let faults = proxy.handle();
    // Without kube's retries, so that every injected answer is seen.
    let cms: Api<ConfigMap> = Api::namespaced(client_via(&env, &proxy, false).await, &env.ns);
    let post = PostParams::default();

    cms.create(&post, &config_map("plain")).await.unwrap();
    faults.conflict_next_writes(1);
    assert!(cms.get("plain").await.is_ok(), "a read is no write");
    assert_eq!(code(cms.create(&post, &config_map("a")).await), Some(409));
    cms.create(&post, &config_map("a")).await.unwrap();

    for status in [429, 500, 503] {
        faults.fail_next(status, 2);
        assert_eq!(code(cms.get("a").await), Some(status));
        assert_eq!(code(cms.get("a").await), Some(status));
        assert!(cms.get("a").await.is_ok(), "the burst of {status} is over");
    }
    let stats = faults.stats();
    assert_eq!((stats.conflicts, stats.errors), (1, 6), "{stats:?}");

    // kube's default client retries 429 (after its Retry-After) and 503: a short burst is
    // ridden over; 500 is not retried.
    let retrying: Api<ConfigMap> = Api::namespaced(retrying, &env.ns);
    faults.fail_next(429, 2);
    retrying.get("a").await.expect("retried over the 429s");
    faults.fail_next(503, 2);
    retrying.get("a").await.expect("retried over the 503s");
    faults.fail_next(500, 1);
    assert_eq!(code(retrying.get("a").await), Some(500));
    assert_eq!(faults.stats().errors, 11);
}

#[tokio::test]
async fn latency_delays_and_a_reset_breaks_the_connection() {
    let env = TestEnv::new("proxy-latency").await;
    let (proxy, client) = through(&env).await;
    let faults = proxy.handle();
    let cms: Api<ConfigMap> = Api::namespaced(client, &env.ns);
    cms.create(&PostParams::default(), &config_map("a"))
        .await
        .unwrap();

    faults.set_latency(Duration::from_millis(400));
    let started = Instant::now();
    cms.get("a").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    faults.set_latency(Duration::ZERO);

    faults.reset_next(1);
    let reset = cms.get("a").await;
    assert!(
        matches!(reset, Err(ref e) if !matches!(e, kube::Error::Api(_))),
        "a reset is a transport error, not an answer: {reset:?}"
    );
    cms.get("a").await.expect("the next request gets through");
    assert_eq!(faults.stats().resets, 1);
}

#[tokio::test]
async fn a_stalled_watch_stays_open_and_delivers_nothing_and_a_reset_ends_it() {
    let env = TestEnv::new("proxy-stall").await;
    let (proxy, client) = through(&env).await;
    let faults = proxy.handle();
    let cms: Api<ConfigMap> = Api::namespaced(client, &env.ns);
    let direct: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let post = PostParams::default();
    let mut watch = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    direct.create(&post, &config_map("before")).await.unwrap();
    assert_eq!(
        next_added(&mut watch).await,
        Some(Some("before".into())),
        "the watch delivers"
    );

    faults.stall_watches(true);
    direct.create(&post, &config_map("during")).await.unwrap();
    assert!(
        next_added(&mut watch).await.is_none(),
        "a stalled watch delivers nothing (and does not end)"
    );
    assert_eq!(faults.stats().stalled, 1);
    faults.stall_watches(false);
    direct.create(&post, &config_map("after")).await.unwrap();
    assert!(
        next_added(&mut watch).await.is_none(),
        "a stalled watch stays stalled"
    );

    // A new watch works; a reset of every connection ends both.
    let mut fresh = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next_added(&mut fresh).await, Some(Some(_))));
    faults.reset_all();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = fresh.next().await {
            if event.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a reset ends an open watch");
}
