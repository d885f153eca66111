//! The OpenFeature Remote Evaluation Protocol (OFREP) on `--ofrep-addr` (off by default): any
//! OpenFeature SDK with an OFREP provider evaluates the flags of the document the agent last
//! handed on, without a flagd process (SPEC.md §3.1).
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one flag. `200 {key, value, reason, variant,
//!   metadata}`; `404 FLAG_NOT_FOUND`; `400 TARGETING_KEY_MISSING` when the flag splits subjects
//!   and the context has no `targetingKey`; `400 PARSE_ERROR` for a body that is not a JSON
//!   object or a `context` that is not an object; `400 INVALID_CONTEXT` for a `targetingKey`
//!   that is not a string; `500 GENERAL` while no document has been handed on.
//! - `POST /ofrep/v1/evaluate/flags`: every flag, `{flags: [...]}` with an entry per flag (an
//!   error entry for one that cannot be evaluated), an `ETag` over the document and the context,
//!   and `304` when `If-None-Match` names it; `500 GENERAL` while no document has been handed on
//!   (an empty list would read as "no flags" to a caching provider).
//!
//! The context's `targetingKey` is the subject. `reason` is `STATIC`, `TARGETING_MATCH`,
//! `SPLIT`, `DISABLED` or `DEFAULT`; `metadata` carries the hotconf `revision` and `hash`.
//! Answers come from memory (a pointer swapped on each hand-off), never blocked by a reload.
//! Every evaluation is counted: by flag, variant and reason, or by error code.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::metrics::Metrics;
use super::source::sha256_hex;
use crate::feature_flags::resolve;

/// The flags the agent serves: those of the document handed on last.
#[derive(Debug, Default)]
pub struct Flags(RwLock<Option<Arc<Current>>>);

#[derive(Debug)]
struct Current {
    flags: Map<String, Value>,
    revision: Option<i64>,
    hash: String,
}

impl Flags {
    /// Serves `flags` (the `featureFlags` of the document handed on, its revision and hash)
    /// from now on.
    pub fn set(&self, flags: Map<String, Value>, revision: Option<i64>, hash: &str) {
        let current = Arc::new(Current {
            flags,
            revision,
            hash: hash.to_string(),
        });
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
struct Server {
    flags: Arc<Flags>,
    metrics: Arc<Metrics>,
}

/// Serves OFREP on `addr` until `shutdown` resolves; returns the bound address.
pub async fn serve(
    addr: &str,
    flags: Arc<Flags>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(one))
        .route("/ofrep/v1/evaluate/flags", post(bulk))
        .with_state(Server { flags, metrics });
    super::metrics::serve_app(addr, app, "OFREP", shutdown).await
}

// An OFREP error: the status and the body's errorCode and errorDetails.
struct Failure(StatusCode, &'static str, String);

fn error_entry(key: &str, f: &Failure) -> Value {
    json!({"key": key, "errorCode": f.1, "errorDetails": f.2})
}

// The targeting key of a request body (`None`: none given).
fn targeting_key(body: &str) -> Result<Option<String>, Failure> {
    if body.trim().is_empty() {
        return Ok(None);
    }
    let parsed: Value = serde_json::from_str(body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            format!("the request is not JSON: {e}"),
        )
    })?;
    if !parsed.is_object() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "the request must be a JSON object".into(),
        ));
    }
    let context = match parsed.get("context") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "PARSE_ERROR",
                "context must be an object".into(),
            ));
        }
    };
    match context.get("targetingKey") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "targetingKey must be a string".into(),
        )),
    }
}

impl Server {
    fn evaluate(
        &self,
        current: &Current,
        key: &str,
        subject: Option<&str>,
    ) -> Result<Value, Failure> {
        let Some(flag) = current.flags.get(key) else {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                "FLAG_NOT_FOUND",
                format!(
                    "flag {key} is not in revision {}",
                    revision_text(current.revision)
                ),
            ));
        };
        let Some(r) = resolve(key, flag, subject) else {
            return Err(Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "GENERAL",
                format!("flag {key} cannot be resolved"),
            ));
        };
        // A split with nobody to bucket: the protocol's error rather than a silent default.
        if r.unbucketed {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "TARGETING_KEY_MISSING",
                format!("flag {key} splits subjects: the context needs a targetingKey"),
            ));
        }
        self.metrics.count_flag(key, &r.variant, r.reason.as_str());
        Ok(json!({
            "key": key,
            "value": r.value,
            "reason": r.reason.as_str(),
            "variant": r.variant,
            "metadata": {"revision": current.revision, "hash": current.hash},
        }))
    }
}

fn revision_text(revision: Option<i64>) -> String {
    revision.map_or_else(|| "(unknown)".into(), |r| r.to_string())
}

fn no_document() -> Failure {
    Failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "GENERAL",
        "the agent has handed on no document yet: no flags to evaluate".into(),
    )
}

async fn one(State(server): State<Server>, Path(key): Path<String>, body: String) -> Response {
    let result = targeting_key(&body).and_then(|subject| {
        let current = server.flags.current().ok_or_else(no_document)?;
        server.evaluate(&current, &key, subject.as_deref())
    });
    match result {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(f) => {
            server.metrics.count_flag_error(f.1);
            (f.0, axum::Json(error_entry(&key, &f))).into_response()
        }
    }
}

async fn bulk(State(server): State<Server>, headers: HeaderMap, body: String) -> Response {
    let request = targeting_key(&body)
        .and_then(|subject| Ok((subject, server.flags.current().ok_or_else(no_document)?)));
    let (subject, current) = match request {
        Ok(r) => r,
        Err(f) => {
            server.metrics.count_flag_error(f.1);
            let body = json!({"errorCode": f.1, "errorDetails": f.2});
            return (f.0, axum::Json(body)).into_response();
        }
    };
    // The answer depends on the document and the subject only.
    let etag = format!(
        "\"{}\"",
        &sha256_hex(format!("{}\0{}", current.hash, subject.as_deref().unwrap_or("\0")).as_bytes())
            [..32]
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // If-None-Match compares weakly (RFC 9110 §13.1.2): `W/"x"` names `"x"` too.
            v.split(',')
                .map(|t| t.trim())
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        })
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let flags: Vec<Value> = current
        .flags
        .keys()
        .map(
            |key| match server.evaluate(&current, key, subject.as_deref()) {
                Ok(answer) => answer,
                Err(f) => {
                    server.metrics.count_flag_error(f.1);
                    error_entry(key, &f)
                }
            },
        )
        .collect();
    (
        StatusCode::OK,
        [(header::ETAG, etag)],
        axum::Json(json!({"flags": flags})),
    )
        .into_response()
}
