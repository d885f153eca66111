//! A fault-injecting HTTPS proxy between a client (the operator) and kube-apiserver, for the
//! chaos suite and the tests: it terminates TLS with a certificate the client's kubeconfig
//! trusts, forwards every request (HTTP/1.1, watch responses streamed) to the API server over
//! TLS, and injects the faults a [`FaultHandle`] asks for at run time: added latency, bursts of
//! 429 (with `Retry-After`), 500 or 503, 409 Conflicts on writes, connection resets, and silent
//! stalls (a watch response stays open and delivers nothing more).
//!
//! The bearer token the client sends is passed on unchanged, so the API server sees the
//! client's own user (and its audit log tells replicas apart).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::error::Error;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The certificates of a proxy: the CA that signed the upstream's certificate (and whose
/// clients trust the proxy's), and the proxy's own serving certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct ProxyTls {
    /// The CA the upstream API server's certificate is checked against.
    pub ca_pem: String,
    /// The proxy's serving certificate chain (for 127.0.0.1).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What the proxy injected so far (counters since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultStats {
    /// Requests received.
    pub requests: u64,
    /// Watch requests received.
    pub watches: u64,
    /// Requests delayed by added latency.
    pub delayed: u64,
    /// Requests answered with an injected 429, 500 or 503.
    pub errors: u64,
    /// Writes answered with an injected 409 Conflict.
    pub conflicts: u64,
    /// Connections reset (by a request that drew a reset, or by a reset of all).
    pub resets: u64,
    /// Watch responses stalled (they deliver nothing more, ever).
    pub stalled: u64,
    /// Requests the upstream could not be reached for (answered 503 by the proxy).
    pub upstream_failures: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    watches: AtomicU64,
    delayed: AtomicU64,
    errors: AtomicU64,
    conflicts: AtomicU64,
    resets: AtomicU64,
    stalled: AtomicU64,
    upstream_failures: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    latency: Duration,
    // (status, requests left)
    errors: Option<(u16, usize)>,
    conflicts: usize,
    resets: usize,
    stall: bool,
    unavailable: bool,
}

struct Shared {
    faults: Mutex<Faults>,
    counters: Counters,
    // Bumped to reset every open connection.
    reset_all: watch::Sender<u64>,
    upstream: String,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

/// Controls a running [`FaultProxy`]: each call takes effect for the requests that arrive
/// after it. Cheap to clone.
#[derive(Clone)]
pub struct FaultHandle(Arc<Shared>);

impl FaultHandle {
    fn with(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.0.faults.lock().expect("lock"));
    }

    /// Delays every request by `latency` before it is forwarded (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.with(|f| f.latency = latency);
    }

    /// Answers the next `count` requests with `status` (429 carries `Retry-After: 1`) and a
    /// Kubernetes `Status` body, without forwarding them.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.with(|f| f.errors = (count > 0).then_some((status, count)));
    }

    /// Answers the next `count` writes (POST, PUT, PATCH) with 409 Conflict.
    pub fn conflict_next_writes(&self, count: usize) {
        self.with(|f| f.conflicts = count);
    }

    /// Resets (TCP RST) the connection of each of the next `count` requests instead of
    /// answering it.
    pub fn reset_next(&self, count: usize) {
        self.with(|f| f.resets = count);
    }

    /// Resets every connection open now (watches included).
    pub fn reset_all(&self) {
        self.0.reset_all.send_modify(|n| *n += 1);
    }

    /// While on, every watch response delivers nothing more from its next chunk on and stays
    /// open: a silent stall. Turning it off lets new watches through; a stalled one stays
    /// stalled until its client gives up on it.
    pub fn stall_watches(&self, on: bool) {
        self.with(|f| f.stall = on);
    }

    /// While on, every request is answered 503 without being forwarded, as a load balancer
    /// answers while its backend fails its health check (e.g. while the API server restarts).
    pub fn set_unavailable(&self, on: bool) {
        self.with(|f| f.unavailable = on);
    }

    /// Cuts every client off (`on`): requests are answered 503 and the connections open now are
    /// reset; `cut(false)` lets requests through again.
    pub fn cut(&self, on: bool) {
        self.set_unavailable(on);
        if on {
            self.reset_all();
        }
    }

    /// Lifts every fault (stalled watches stay stalled).
    pub fn clear(&self) {
        self.with(|f| *f = Faults::default());
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.0.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultStats {
            requests: n(&c.requests),
            watches: n(&c.watches),
            delayed: n(&c.delayed),
            errors: n(&c.errors),
            conflicts: n(&c.conflicts),
            resets: n(&c.resets),
            stalled: n(&c.stalled),
            upstream_failures: n(&c.upstream_failures),
        }
    }
}

/// A running proxy on a loopback port. Dropping it stops accepting connections (open ones
/// end with the runtime).
pub struct FaultProxy {
    url: String,
    handle: FaultHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::FaultProxy(format!("{what}: {e}"))
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) in front of `upstream` (`https://HOST:PORT`).
    pub async fn start(upstream: &str, tls: &ProxyTls) -> Result<FaultProxy, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| tls_error("the proxy's certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
            .map_err(|e| tls_error("the proxy's key", e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| tls_error("the proxy's certificate and key", e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| tls_error("the CA", e))?;
            roots.add(ca).map_err(|e| tls_error("the CA", e))?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let hostport = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport.as_str(), |(h, _)| h)
            .to_string();
        let server_name =
            ServerName::try_from(host).map_err(|e| tls_error("the upstream's name", e))?;

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Process {
                what: "binding the fault proxy".into(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Process {
                what: "reading the fault proxy's port".into(),
                source,
            })?
            .port();
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
            reset_all: watch::channel(0).0,
            upstream: hostport,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
        });
        let task = tokio::spawn(accept(listener, acceptor, shared.clone()));
        Ok(FaultProxy {
            url: format!("https://127.0.0.1:{port}"),
            handle: FaultHandle(shared),
            task,
        })
    }

    /// The proxy's URL, for a kubeconfig's `server`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The handle that injects faults.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

// One downstream connection: the way to kill it, and its upstream connection (opened on the
// first request, again after a failure).
struct Conn {
    kill: Notify,
    upstream: tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
}

async fn accept(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        // Dropped connections end with a RST, as a reset should.
        let _ = tcp.set_zero_linger();
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut resets = shared.reset_all.subscribe();
            resets.mark_unchanged();
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let conn = Arc::new(Conn {
                kill: Notify::new(),
                upstream: tokio::sync::Mutex::new(None),
            });
            let service = {
                let (shared, conn) = (shared.clone(), conn.clone());
                hyper::service::service_fn(move |req| handle(shared.clone(), conn.clone(), req))
            };
            let serving = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = serving => {}
                () = conn.kill.notified() => {}
                _ = resets.changed() => {
                    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

enum Decision {
    Forward,
    Unavailable,
    Fail(u16),
    Conflict,
    Reset,
}

fn is_watch(req: &Request<Incoming>) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    })
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let watch = is_watch(&req);
    if watch {
        counters.watches.fetch_add(1, Ordering::Relaxed);
    }
    let write = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let (latency, decision) = {
        let mut f = shared.faults.lock().expect("lock");
        let decision = if f.unavailable {
            Decision::Unavailable
        } else if f.resets > 0 {
            f.resets -= 1;
            Decision::Reset
        } else if let Some((status, left)) = f.errors {
            f.errors = (left > 1).then_some((status, left - 1));
            Decision::Fail(status)
        } else if write && f.conflicts > 0 {
            f.conflicts -= 1;
            Decision::Conflict
        } else {
            Decision::Forward
        };
        (f.latency, decision)
    };
    if !latency.is_zero() {
        counters.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(latency).await;
    }
    match decision {
        Decision::Reset => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            conn.kill.notify_one();
            // The connection is dropped before this answers.
            std::future::pending::<()>().await;
            Ok(status_response(503, "reset"))
        }
        Decision::Fail(status) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            Ok(status_response(status, "injected by the fault proxy"))
        }
        Decision::Conflict => {
            counters.conflicts.fetch_add(1, Ordering::Relaxed);
            Ok(status_response(
                409,
                "Operation cannot be fulfilled: the object has been modified (injected by the fault proxy)",
            ))
        }
        Decision::Unavailable => Ok(status_response(
            503,
            "the API server is not ready (held by the fault proxy)",
        )),
        Decision::Forward => Ok(forward(&shared, &conn, req, watch).await),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

fn status_response(status: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason(status), "code": status,
    })
    .to_string();
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
        .header("content-type", "application/json");
    if status == 429 {
        response = response.header("retry-after", "1");
    }
    response
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a static response")
}

async fn connect(shared: &Shared) -> std::io::Result<SendRequest<Incoming>> {
    let tcp = TcpStream::connect(&shared.upstream).await?;
    let tls = shared
        .connector
        .connect(shared.server_name.clone(), tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn forward(
    shared: &Arc<Shared>,
    conn: &Conn,
    req: Request<Incoming>,
    watch: bool,
) -> Response<ProxyBody> {
    let mut upstream = conn.upstream.lock().await;
    if upstream.as_ref().is_none_or(|s| s.is_closed()) {
        *upstream = connect(shared).await.ok();
    }
    let failed = |shared: &Shared| {
        shared
            .counters
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        status_response(503, "the fault proxy cannot reach the API server")
    };
    let Some(sender) = upstream.as_mut() else {
        return failed(shared);
    };
    if sender.ready().await.is_err() {
        *upstream = None;
        return failed(shared);
    }
    match sender.send_request(req).await {
        Ok(response) => response.map(|body| {
            Stallable {
                inner: body,
                watch,
                stalled: false,
                shared: shared.clone(),
            }
            .boxed()
        }),
        Err(_) => {
            *upstream = None;
            failed(shared)
        }
    }
}

// A response body that delivers nothing more, and never ends, once a watch stall is on.
struct Stallable {
    inner: Incoming,
    watch: bool,
    stalled: bool,
    shared: Arc<Shared>,
}

impl Body for Stallable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.watch && !this.stalled && this.shared.faults.lock().expect("lock").stall {
            this.stalled = true;
            this.shared.counters.stalled.fetch_add(1, Ordering::Relaxed);
        }
        if this.stalled {
            // Never woken: the client sees an open connection that says nothing.
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        !self.stalled && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
