//! Supervised watches: kube's `watcher` with bookmarks and a server-side timeout, on a client of
//! its own whose transport reports every response and every chunk of a stream as progress
//! (kube's watcher consumes bookmarks and re-watches without telling its caller, so the wire is
//! the one place they show). The supervisor judges the watch by that progress: an error marks it
//! down and restarts it with a fresh list after a backoff; silence beyond the idle bound, while
//! the API server answers, marks it stalled and restarts it too. A stalled watch is never
//! trusted: its stream is dropped, not waited on.

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
use tracing::{info, warn};

use super::{Health, Problem, Watch, WatchKind};

type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

impl Health {
    /// A supervised watch of `kind` (see the module): `api` builds the watched API on the
    /// client it is given (this watch's own); `config` gets the server-side timeout.
    pub(crate) fn watch<K, F>(
        self: &Arc<Self>,
        kind: WatchKind,
        name: String,
        client: &Client,
        api: F,
        config: watcher::Config,
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
        let config = config.timeout(self.bounds.watch_timeout);
        let supervisor = Supervisor {
            health: self.clone(),
            watch,
            probe: client.clone(),
            start: Box::new(move || watcher(api.clone(), config.clone()).boxed()),
            stream: None,
            failures: 0,
        };
        futures::stream::unfold(supervisor, |mut s| async move {
            let item = s.next().await;
            Some((item, s))
        })
    }
}

struct Supervisor<K: 'static> {
    health: Arc<Health>,
    watch: Arc<Watch>,
    // Asks the API server whether it answers at all (kube-apiserver's own `/version`).
    probe: Client,
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
                    tokio::time::sleep(backoff(self.failures, idle)).await;
                }
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
async fn why_silent(probe: &Client, idle: Duration, silent: Duration) -> Problem {
    let limit = (idle / 2).min(Duration::from_secs(5));
    let secs = silent.as_secs();
    match tokio::time::timeout(limit, probe.apiserver_version()).await {
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
    use super::*;

    #[test]
    fn restarts_after_errors_back_off_within_the_idle_bound() {
        let idle = Duration::from_secs(60);
        let ms: Vec<u128> = (1..=8).map(|n| backoff(n, idle).as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(backoff(u32::MAX, idle), Duration::from_secs(30));
        assert_eq!(backoff(5, Duration::from_secs(3)), Duration::from_secs(3));
    }
}
