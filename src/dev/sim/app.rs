//! The stand-in application of simulated pods: one HTTP server on 127.0.0.1 that answers every
//! pod's reload POST on its own path (`/pods/NAMESPACE/NAME/...`), reads the file the agent
//! names in its `{"revision","hash","file"}` body, records the reload, and answers 204 — or 500
//! while the pod's fault is `reload-fails`, or 204 late while it is `reload-slow=DURATION`
//! (gated on the revision handed off).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};

use super::faults::{Fault, FaultSpec};

/// One reload the stand-in app saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    /// The revision in the agent's POST.
    pub revision: Option<i64>,
    /// Its hash.
    pub hash: Option<String>,
    /// The file the agent wrote.
    pub file: Option<PathBuf>,
    /// That file's content when the reload came.
    pub content: Option<String>,
    /// What the app answered.
    pub status: u16,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
pub(super) struct AppPod {
    pub(super) uid: String,
    pub(super) fault: Option<FaultSpec>,
    pub(super) restart_revision: Option<String>,
    pub(super) reloads: Vec<Reload>,
}

/// The pods the app answers for, by `namespace/name`.
#[derive(Clone, Default)]
pub(super) struct App {
    pub(super) pods: Arc<Mutex<HashMap<String, AppPod>>>,
}

impl App {
    /// Registers (or refreshes) a pod; a new uid under a known name starts a fresh record.
    pub(super) fn register(
        &self,
        key: &str,
        uid: &str,
        fault: Option<FaultSpec>,
        restart_revision: Option<String>,
    ) {
        let mut pods = self.pods.lock().expect("app lock");
        let pod = pods.entry(key.to_string()).or_default();
        if pod.uid != uid {
            *pod = AppPod {
                uid: uid.to_string(),
                ..AppPod::default()
            };
        }
        pod.fault = fault;
        pod.restart_revision = restart_revision;
    }

    pub(super) fn reloads(&self, key: &str) -> Vec<Reload> {
        self.pods
            .lock()
            .expect("app lock")
            .get(key)
            .map(|p| p.reloads.clone())
            .unwrap_or_default()
    }

    /// Serves on a free loopback port until `shutdown` fires; returns the base URL.
    pub(super) async fn serve(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let router = Router::new()
            .route("/pods/{ns}/{name}", post(reload))
            .route("/pods/{ns}/{name}/{*rest}", post(reload_path))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await;
        });
        Ok(url)
    }
}

async fn reload_path(
    State(app): State<App>,
    Path((ns, name, _rest)): Path<(String, String, String)>,
    body: String,
) -> StatusCode {
    handle(&app, &ns, &name, &body).await
}

async fn reload(
    State(app): State<App>,
    Path((ns, name)): Path<(String, String)>,
    body: String,
) -> StatusCode {
    handle(&app, &ns, &name, &body).await
}

async fn handle(app: &App, ns: &str, name: &str, body: &str) -> StatusCode {
    let handed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let revision = handed["revision"].as_i64();
    let file = handed["file"].as_str().map(PathBuf::from);
    let content = match &file {
        Some(f) => tokio::fs::read_to_string(f).await.ok(),
        None => None,
    };
    let key = format!("{ns}/{name}");
    let applying = |pod: &AppPod| {
        pod.fault
            .as_ref()
            .filter(|f| f.applies(pod.restart_revision.as_deref(), revision))
            .map(|f| f.fault)
    };
    // A slow app: the answer comes later (the lock is not held meanwhile).
    let slow = app
        .pods
        .lock()
        .expect("app lock")
        .get(&key)
        .and_then(|pod| match applying(pod) {
            Some(Fault::ReloadSlow(d)) => Some(d),
            _ => None,
        });
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    let mut pods = app.pods.lock().expect("app lock");
    let Some(pod) = pods.get_mut(&key) else {
        return StatusCode::NOT_FOUND;
    };
    let fails = applying(pod) == Some(Fault::ReloadFails);
    let status = if fails {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    pod.reloads.push(Reload {
        revision,
        hash: handed["hash"].as_str().map(str::to_string),
        file,
        content,
        status: status.as_u16(),
        at: chrono::Utc::now(),
    });
    status
}
