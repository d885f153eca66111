//! Supervised watches: the list-then-watch of `health::list` (a list from the API server's watch
//! cache, parsed as it streams, then a watch with bookmarks and a server-side timeout), on a
//! client of its own whose transport reports every response and every chunk of a stream as
//! progress (bookmarks and re-watches happen inside the stream without telling its caller, so
//! the wire is the one place they show). The supervisor judges the watch by that progress: an
//! error marks it down and restarts it with a fresh list after a backoff; silence beyond the idle
//! bound, while the API server answers, marks it stalled and restarts it too. A stalled watch is
//! never trusted: its stream is dropped, not waited on.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, future::BoxFuture, stream::BoxStream};
use hyper::body::Frame;
use kube::{Api, Client, Resource, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Health, Problem, Watch, WatchKind, list::Parse};

type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

// Whether the API server answers at all (kube-apiserver's own `/version`).
type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Health {
    /// A supervised watch of `kind` (see the module): `api` builds the watched API on the
    /// client it is given (this watch's own); `config` gets the server-side timeout and the
    /// page size; `parse` parses each listed object (see `health::list`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn watch<K, F>(
        self: &Arc<Self>,
        kind: WatchKind,
        name: String,
        client: &Client,
        api: F,
        config: watcher::Config,
        parse: Parse<K>,
    ) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K::DynamicType: Default,
        F: FnOnce(Client) -> Api<K>,
    {
        let watch = self.register_watch(kind, name);
        let observed = Client::new(
            Observed {
                inner: client.clone(),
                watch: watch.clone(),
            },
            client.default_namespace().to_string(),
        );
        let api = api(observed);
        let config = config
            .timeout(self.bounds.watch_timeout)
            .page_size(self.bounds.list_page_size);
        let client = client.clone();
        let probe: Probe = Arc::new(move || {
            let client = client.clone();
            Box::pin(async move {
                client
                    .apiserver_version()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        });
        supervise(self.clone(), watch, probe, move || {
            super::list::list_and_watch(api.clone(), config.clone(), parse).boxed()
        })
    }
}

// The supervised stream: `start` begins a fresh watch (a list, then watching).
fn supervise<K: Send + 'static>(
    health: Arc<Health>,
    watch: Arc<Watch>,
    probe: Probe,
    start: impl FnMut() -> Events<K> + Send + 'static,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
    let supervisor = Supervisor {
        health,
        watch,
        probe,
        start: Box::new(start),
        stream: None,
        failures: 0,
    };
    futures::stream::unfold(supervisor, |mut s| async move {
        let item = s.next().await;
        Some((item, s))
    })
}

struct Supervisor<K: 'static> {
    health: Arc<Health>,
    watch: Arc<Watch>,
    probe: Probe,
    start: Box<dyn FnMut() -> Events<K> + Send>,
    stream: Option<Events<K>>,
    // Errors since the last successful list, for the backoff.
    failures: u32,
}

impl<K: 'static> Supervisor<K> {
    async fn next(&mut self) -> watcher::Result<watcher::Event<K>> {
        let idle = self.health.bounds.idle;
        // Silence counts only while someone waits for the watch: a consumer that stops polling
        // (a controller whose reconcile slots are all busy) leaves its events on the wire, and
        // that is not the watch's fault.
        let waiting_since = Instant::now();
        loop {
            if self.stream.is_none() {
                if self.failures > 0 {
                    let wait = backoff(self.failures, idle);
                    debug!(watch = %self.watch.name, failures = self.failures, ?wait, "watching again after a backoff");
                    tokio::time::sleep(wait).await;
                }
                debug!(watch = %self.watch.name, "listing and watching");
                self.watch.with(|s| s.restarted(Instant::now(), None));
                self.stream = Some((self.start)());
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let deadline = self
                .watch
                .with(|s| s.deadline(idle))
                .max(waiting_since + idle);
            let item = tokio::select! {
                item = stream.next() => Some(item),
                () = tokio::time::sleep_until(deadline) => None,
            };
            match item {
                Some(Some(Ok(event))) => {
                    let now = Instant::now();
                    if matches!(event, watcher::Event::InitDone) {
                        if self.failures > 0 || self.watch.with(|s| s.problem.is_some()) {
                            info!(watch = %self.watch.name, "watch listed again; up");
                        }
                        self.failures = 0;
                        self.watch.with(|s| s.listed(now));
                    } else {
                        self.watch.with(|s| s.progress(now));
                    }
                    return Ok(event);
                }
                Some(Some(Err(error))) => {
                    warn!(watch = %self.watch.name, %error, "watch failed; restarting it with a fresh list");
                    self.watch.with(|s| s.failed(error.to_string()));
                    self.failures = self.failures.saturating_add(1);
                    self.stream = None;
                    self.health.restarted(self.watch.kind);
                    return Err(error);
                }
                // kube's watcher does not end; if it does, start over.
                Some(None) => self.stream = None,
                None => {
                    let now = Instant::now();
                    let silent = self
                        .watch
                        .with(|s| s.idle_for(now))
                        .min(now.saturating_duration_since(waiting_since));
                    if silent <= idle {
                        // Progress came through the transport meanwhile.
                        continue;
                    }
                    let why = why_silent(&self.probe, idle, silent).await;
                    warn!(watch = %self.watch.name, reason = ?why, "watch stalled; restarting it");
                    self.stream = None;
                    self.watch.with(|s| s.restarted(Instant::now(), Some(why)));
                    self.health.restarted(self.watch.kind);
                }
            }
        }
    }
}

// A silent watch with the API server answering is stalled; without, it is down. (A free
// function: the supervisor's future must stay `Send`, and the supervisor is not `Sync`.)
async fn why_silent(probe: &Probe, idle: Duration, silent: Duration) -> Problem {
    let limit = (idle / 2).min(Duration::from_secs(5));
    let secs = silent.as_secs();
    match tokio::time::timeout(limit, probe()).await {
        Ok(Ok(_)) => Problem::Stalled(format!(
            "no event or bookmark for {secs}s while the API server answers; restarted"
        )),
        Ok(Err(e)) => Problem::Down(format!(
            "no event or bookmark for {secs}s, and the API server fails: {e}"
        )),
        Err(_) => Problem::Down(format!(
            "no event or bookmark for {secs}s, and the API server does not answer within {}s",
            limit.as_secs_f32()
        )),
    }
}

// After errors in a row: 0.5 s, doubling, at most 30 s and never beyond the idle bound (a test
// with second-long bounds recovers in seconds).
fn backoff(failures: u32, idle: Duration) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(Duration::from_secs(30))
        .min(idle)
}

// The transport of one watch's client: every successful response and every chunk of a body is
// progress of that watch.
#[derive(Clone)]
struct Observed {
    inner: Client,
    watch: Arc<Watch>,
}

impl tower_service::Service<http::Request<kube::client::Body>> for Observed {
    type Response = http::Response<ObservedBody>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let (client, watch) = (self.inner.clone(), self.watch.clone());
        Box::pin(async move {
            let response = client.send(request).await?;
            if response.status().is_success() {
                watch.progress();
            }
            Ok(response.map(|body| ObservedBody { body, watch }))
        })
    }
}

struct ObservedBody {
    body: kube::client::Body,
    watch: Arc<Watch>,
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = kube::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            this.watch.progress();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    use super::*;
    use crate::health::Bounds;
    use crate::metrics::OperatorMetrics;

    // Real time, kept short: the bounds are what a deployment would set, scaled down.
    const IDLE: Duration = Duration::from_millis(300);

    fn health() -> (Arc<Health>, Arc<OperatorMetrics>) {
        let metrics = Arc::new(OperatorMetrics::register(&mut Default::default()));
        let bounds = Bounds {
            idle: IDLE,
            watch_timeout: 2,
            loop_stall: IDLE,
            list_page_size: 500,
        };
        (
            Arc::new(Health::new(bounds, Some(metrics.clone()))),
            metrics,
        )
    }

    fn restarts(metrics: &OperatorMetrics) -> u64 {
        metrics
            .watch_restarts
            .get_or_create(&OperatorMetrics::kind("ConfigMap"))
            .get()
    }

    // Each start lists nothing and then stays silent forever; the first start fails first.
    fn silent_after_listing(
        fail_first: bool,
    ) -> (
        Arc<AtomicUsize>,
        impl FnMut() -> Events<ConfigMap> + Send + 'static,
    ) {
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = starts.clone();
        let start = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let failure = (fail_first && n == 0).then_some(Err(watcher::Error::NoResourceVersion));
            futures::stream::iter(failure)
                .chain(futures::stream::iter([
                    Ok(Event::Init),
                    Ok(Event::InitDone),
                ]))
                .chain(futures::stream::pending())
                .boxed()
        };
        (starts, start)
    }

    fn answers(ok: bool) -> Probe {
        Arc::new(move || {
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("connection refused".to_string())
                }
            })
        })
    }

    #[tokio::test]
    async fn a_silent_watch_is_dropped_and_listed_afresh() {
        let (health, metrics) = health();
        let watch = health.register_watch(WatchKind::ConfigMap, "ConfigMaps in test".into());
        let (starts, start) = silent_after_listing(false);
        let mut events = Box::pin(supervise(health.clone(), watch, answers(true), start));
        assert!(matches!(events.next().await, Some(Ok(Event::Init))));
        assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
        assert!(health.readiness(Instant::now()).is_ok());

        // Nothing more arrives: after the bound, the stream is dropped and a new one lists.
        let silent_from = Instant::now();
        assert!(matches!(events.next().await, Some(Ok(Event::Init))));
        assert!(silent_from.elapsed() > IDLE);
        assert_eq!(starts.load(Ordering::SeqCst), 2, "restarted, not waited on");
        assert_eq!(restarts(&metrics), 1);
        let why = health.readiness(Instant::now()).unwrap_err();
        assert!(
            why.contains("stalled") && why.contains("API server answers"),
            "{why}"
        );
        health.update_metrics(Instant::now());
        let up = |m: &OperatorMetrics| {
            m.watch_up
                .get_or_create(&OperatorMetrics::kind("ConfigMap"))
                .get()
        };
        assert_eq!(up(&metrics), 0);
        // Up again only once the new watch has listed.
        assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
        assert!(health.readiness(Instant::now()).is_ok());
        health.update_metrics(Instant::now());
        assert_eq!(up(&metrics), 1);
    }

    #[tokio::test]
    async fn silence_without_an_api_server_is_down_and_an_error_restarts_after_a_backoff() {
        let (health, metrics) = health();
        let watch = health.register_watch(WatchKind::ConfigMap, "ConfigMaps in test".into());
        let (starts, start) = silent_after_listing(true);
        let mut events = Box::pin(supervise(health.clone(), watch, answers(false), start));
        assert!(matches!(events.next().await, Some(Err(_))));
        assert!(
            health
                .readiness(Instant::now())
                .unwrap_err()
                .contains("down")
        );
        let failed_at = Instant::now();
        assert!(matches!(events.next().await, Some(Ok(Event::Init))));
        assert!(
            failed_at.elapsed() >= IDLE,
            "backed off (0.5 s, capped at the idle bound)"
        );
        assert_eq!(
            starts.load(Ordering::SeqCst),
            2,
            "a fresh list after the error"
        );
        assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
        assert!(health.readiness(Instant::now()).is_ok());
        assert!(matches!(events.next().await, Some(Ok(Event::Init))));
        let why = health.readiness(Instant::now()).unwrap_err();
        assert!(
            why.contains("down") && why.contains("connection refused"),
            "{why}"
        );
        assert_eq!(restarts(&metrics), 2, "the error and the silence");
    }

    #[test]
    fn restarts_after_errors_back_off_within_the_idle_bound() {
        let idle = Duration::from_secs(60);
        let ms: Vec<u128> = (1..=8).map(|n| backoff(n, idle).as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(backoff(u32::MAX, idle), Duration::from_secs(30));
        assert_eq!(backoff(5, Duration::from_secs(3)), Duration::from_secs(3));
    }
}
