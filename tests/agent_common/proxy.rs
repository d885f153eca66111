//! A TCP proxy in front of the API server whose connections a test stalls or cuts. TLS passes
//! through untouched (the server's certificate names 127.0.0.1, whatever the port), so an
//! agent whose kubeconfig points here talks to the real API server until a fault is injected:
//!
//! - [`FaultProxy::stall`]: a silent stall. Every open connection stays open and delivers
//!   nothing, in either direction, for good (a dead path: a lost NAT entry, a peer gone
//!   without a reset); connections made during the stall are accepted and held the same way.
//! - [`FaultProxy::cut`]: every connection is closed, and new ones are closed as they come.
//! - [`FaultProxy::heal`]: new connections are forwarded again. Stalled ones stay dead, so
//!   only a client that drops them and connects again recovers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Hold every connection open and deliver nothing.
    Stall,
    /// Close every connection.
    Cut,
}

/// The proxy; it stops (closing every connection) when dropped.
pub struct FaultProxy {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    // Bumped by each `cut`, so that connections held by an earlier stall close too.
    cuts: watch::Sender<u64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: AbortHandle,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:PORT to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let (cuts, cuts_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, mode_rx.clone(), cuts_rx.clone()));
            }
        })
        .abort_handle();
        FaultProxy {
            addr,
            mode,
            cuts,
            accepted,
            task,
        }
    }

    /// Starts a silent stall.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// A copy of the kubeconfig at `kubeconfig` whose server is this proxy instead of
    /// `server`, written to `path`.
    pub fn kubeconfig(&self, kubeconfig: &std::path::Path, server: &str, path: &std::path::Path) {
        let text = std::fs::read_to_string(kubeconfig).unwrap();
        assert!(
            text.contains(server),
            "{server} not in {}",
            kubeconfig.display()
        );
        std::fs::write(
            path,
            text.replace(server, &format!("https://{}", self.addr)),
        )
        .unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// The `host:port` of an `https://host:port` URL.
pub fn upstream_of(server: &str) -> SocketAddr {
    let hostport = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1");
    hostport.parse().unwrap()
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let now = *mode.borrow_and_update();
    match now {
        Mode::Cut => return,
        Mode::Stall => {
            // Held open, read from by no one, until a cut.
            let _ = cuts.changed().await;
            return;
        }
        Mode::Forward => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut sw) => return,
        _ = tokio::io::copy(&mut sr, &mut cw) => return,
        _ = cuts.changed() => return,
        _ = mode.wait_for(|m| *m == Mode::Stall) => {}
    }
    // Stalled: both sockets stay open and nothing moves, until a cut.
    let _ = cuts.changed().await;
}
