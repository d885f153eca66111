//! The admission webhook (optional): a validating webhook that refuses invalid RuntimeConfig and
//! PoolBudget objects at `kubectl apply` (and reports them on `--dry-run=server`) with exactly the
//! operator's validation, and a mutating webhook that records who changed a spec in
//! `hotconf.dev/changed-by`. Served over TLS on its own port, with certificates either
//! self-managed (a CA and serving certificate in a Secret, renewed before expiry, caBundles kept
//! current) or mounted from a Secret that cert-manager maintains.

pub mod admission;
pub mod attribution;
pub mod certs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::{Json, Router, extract::State, routing::post};
use kube::Client;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Error;
use crate::metrics::OperatorMetrics;

/// Webhook settings (`hotconf operator --webhook ...`).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Serve the admission webhooks.
    #[arg(long, env = "HOTCONF_WEBHOOK", default_value_t = false)]
    pub webhook: bool,
    /// Address of the webhook's TLS server.
    #[arg(long, env = "HOTCONF_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Serve `tls.crt`/`tls.key` from this directory (a mounted cert-manager Secret, reloaded
    /// when it changes) instead of managing certificates.
    #[arg(long, env = "HOTCONF_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// The Secret that holds self-managed certificates.
    #[arg(
        long,
        env = "HOTCONF_WEBHOOK_SECRET",
        default_value = "hotconf-webhook-tls"
    )]
    pub webhook_secret: String,
    /// The Secret's namespace (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "HOTCONF_WEBHOOK_NAMESPACE")]
    pub webhook_namespace: Option<String>,
    /// The webhook Service's name: the certificate is issued for `<service>.<namespace>.svc`.
    #[arg(
        long,
        env = "HOTCONF_WEBHOOK_SERVICE",
        default_value = "hotconf-webhook"
    )]
    pub webhook_service: String,
    /// More names (DNS names or IP addresses) for the serving certificate.
    #[arg(long, env = "HOTCONF_WEBHOOK_EXTRA_NAMES", value_delimiter = ',')]
    pub webhook_extra_names: Vec<String>,
    /// ValidatingWebhookConfigurations whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "HOTCONF_WEBHOOK_VALIDATING_CONFIG",
        value_delimiter = ',',
        default_value = "hotconf"
    )]
    pub webhook_validating_config: Vec<String>,
    /// MutatingWebhookConfigurations whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "HOTCONF_WEBHOOK_MUTATING_CONFIG",
        value_delimiter = ',',
        default_value = "hotconf"
    )]
    pub webhook_mutating_config: Vec<String>,
    /// Validity of a self-managed CA.
    #[arg(long, env = "HOTCONF_WEBHOOK_CA_VALIDITY", default_value = "87600h", value_parser = duration)]
    pub webhook_ca_validity: Duration,
    /// Validity of a self-managed serving certificate.
    #[arg(long, env = "HOTCONF_WEBHOOK_CERT_VALIDITY", default_value = "8760h", value_parser = duration)]
    pub webhook_cert_validity: Duration,
    /// Renew certificates that expire within this long.
    #[arg(long, env = "HOTCONF_WEBHOOK_RENEW_BEFORE", default_value = "720h", value_parser = duration)]
    pub webhook_renew_before: Duration,
    /// After a new CA joins the caBundle, how long to wait before serving a certificate it
    /// signed (the API server picks the new bundle up from its own cache).
    #[arg(long, env = "HOTCONF_WEBHOOK_BUNDLE_PROPAGATION", default_value = "3s", value_parser = duration)]
    pub webhook_bundle_propagation: Duration,
    /// How often certificates are checked (and caBundles re-asserted).
    #[arg(long, env = "HOTCONF_WEBHOOK_CHECK_INTERVAL", default_value = "5m", value_parser = duration)]
    pub webhook_check_interval: Duration,
}

fn duration(s: &str) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::parse(s)
}

/// The certificate the TLS server presents, swapped in place on renewal.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// Replaces the served certificate.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), Error> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| Error::webhook("reading the serving certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::webhook("reading the serving key", e))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(certs, key, &provider)
            .map_err(|e| Error::webhook("the serving certificate and key", e))?;
        *self.0.write().expect("lock") = Some(Arc::new(certified));
        Ok(())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("lock").clone()
    }
}

#[derive(Clone)]
struct HookState {
    client: Client,
    metrics: Arc<OperatorMetrics>,
    keys: Arc<attribution::Keys>,
}

async fn validate_handler(
    State(state): State<HookState>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let Ok(req): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return Json(AdmissionResponse::invalid("not an AdmissionReview request").into_review());
    };
    let response = admission::validate(&state.client, &req).await;
    state.observe("validate", &req, &response, started);
    Json(response.into_review())
}

async fn mutate_handler(
    State(state): State<HookState>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let Ok(req): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return Json(AdmissionResponse::invalid("not an AdmissionReview request").into_review());
    };
    let response = admission::attribute(&req, &state.keys);
    state.observe("mutate", &req, &response, started);
    Json(response.into_review())
}

impl HookState {
    fn observe(
        &self,
        hook: &str,
        req: &AdmissionRequest<DynamicObject>,
        response: &AdmissionResponse,
        started: Instant,
    ) {
        let labels = crate::metrics::WebhookLabels {
            hook: hook.into(),
            kind: req.kind.kind.clone(),
            allowed: response.allowed.to_string(),
        };
        self.metrics
            .webhook_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if !response.allowed {
            tracing::info!(hook, kind = %req.kind.kind, name = %req.name, namespace = ?req.namespace, user = ?req.user_info.username, dry_run = req.dry_run, "admission refused");
        }
    }
}

/// Starts the webhook: certificates first, then the TLS server and the renewal loop. Returns
/// when `shutdown` resolves. `keys` learns the attribution key from the certificates' key
/// material (the operator verifies `hotconf.dev/changed-by` with it).
pub async fn run(
    client: Client,
    args: WebhookArgs,
    metrics: Arc<OperatorMetrics>,
    keys: Arc<attribution::Keys>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let slot = Arc::new(CertSlot::default());
    let renewal: futures::future::BoxFuture<'static, ()> = match &args.webhook_cert_dir {
        Some(dir) => {
            let dir = dir.clone();
            load_dir(&slot, &dir, &keys)?;
            let slot = slot.clone();
            let keys = keys.clone();
            let every = args.webhook_check_interval.min(Duration::from_secs(60));
            Box::pin(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = load_dir(&slot, &dir, &keys) {
                        tracing::warn!(error = %e, "reloading the webhook certificate failed");
                    }
                }
            })
        }
        None => {
            let manager = self_managed(&client, &args);
            let mut current = manager.ensure(None).await?;
            slot.set(&current.cert, &current.key)?;
            keys.learn(current.ca_key.as_bytes());
            let slot = slot.clone();
            let keys = keys.clone();
            let every = args.webhook_check_interval;
            let propagation = args.webhook_bundle_propagation;
            Box::pin(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match manager.ensure(Some(&current)).await {
                        Ok(m) if m != current => {
                            if m.bundle() != current.bundle() {
                                // The old certificate stays trusted (its CA is still in the
                                // bundle) until the API server has the new bundle.
                                tokio::time::sleep(propagation).await;
                            }
                            match slot.set(&m.cert, &m.key) {
                                Ok(()) => {
                                    keys.learn(m.ca_key.as_bytes());
                                    current = m;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "serving the renewed certificate failed")
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "checking the webhook certificate failed")
                        }
                    }
                }
            })
        }
    };

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::webhook("choosing the TLS protocol versions", e))?
    .with_no_client_auth()
    .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|source| Error::Serve {
            what: format!("binding the webhook server to {}", args.webhook_addr),
            source,
        })?;
    tracing::info!(addr = %args.webhook_addr, "admission webhook listening");
    let app = Router::new()
        .route("/validate", post(validate_handler))
        .route("/mutate", post(mutate_handler))
        .with_state(HookState {
            client,
            metrics,
            keys,
        });

    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(error = %e, "webhook connection ended");
                }
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = renewal => {}
        _ = shutdown => {}
    }
    Ok(())
}

fn self_managed(client: &Client, args: &WebhookArgs) -> certs::SelfManaged {
    let namespace = args
        .webhook_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let svc = &args.webhook_service;
    let mut names = vec![
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
        format!("{svc}.{namespace}"),
        svc.clone(),
    ];
    names.extend(args.webhook_extra_names.iter().cloned());
    certs::SelfManaged {
        client: client.clone(),
        namespace,
        secret: args.webhook_secret.clone(),
        names,
        life: certs::Lifetimes {
            ca: args.webhook_ca_validity,
            cert: args.webhook_cert_validity,
            renew_before: args.webhook_renew_before,
        },
        validating: args.webhook_validating_config.clone(),
        mutating: args.webhook_mutating_config.clone(),
    }
}

fn load_dir(slot: &CertSlot, dir: &std::path::Path, keys: &attribution::Keys) -> Result<(), Error> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|source| Error::Io {
            path: dir.join(f),
            source,
        })
    };
    let key = read("tls.key")?;
    slot.set(&read("tls.crt")?, &key)?;
    keys.learn(key.as_bytes());
    Ok(())
}
