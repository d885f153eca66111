//! Serving certificates of the admission webhook, self-managed: a CA and a serving certificate
//! kept in a Secret, renewed before they expire, and the CA bundle of the webhook configurations
//! kept in step. A renewed CA is added to the bundle next to the old one before any certificate
//! it signs is served, so the API server never sees a certificate it cannot verify.
//!
//! The decisions ([`plan_rotation`]) are pure; [`SelfManaged`] does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::Error;

const CA_CN: &str = "hotconf-webhook-ca";
const ANN_CA_NOT_AFTER: &str = "hotconf.dev/ca-not-after";
const ANN_PREVIOUS_CA_NOT_AFTER: &str = "hotconf.dev/previous-ca-not-after";
const ANN_CERT_NOT_AFTER: &str = "hotconf.dev/cert-not-after";
const ANN_SANS: &str = "hotconf.dev/cert-names";

/// Everything the webhook needs to serve TLS and to be trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Material {
    /// The CA certificate (PEM).
    pub ca_cert: String,
    /// The CA key (PEM).
    pub ca_key: String,
    /// When the CA expires.
    pub ca_not_after: Option<DateTime<Utc>>,
    /// The CA it replaced, while that is still valid (PEM).
    pub previous_ca: Option<String>,
    /// When the previous CA expires.
    pub previous_ca_not_after: Option<DateTime<Utc>>,
    /// The serving certificate (PEM).
    pub cert: String,
    /// The serving key (PEM).
    pub key: String,
    /// When the serving certificate expires.
    pub cert_not_after: Option<DateTime<Utc>>,
    /// The names the serving certificate is for.
    pub names: Vec<String>,
}

impl Material {
    /// The CA bundle to trust: the current CA and, while valid, the previous one.
    pub fn bundle(&self) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some(prev) = &self.previous_ca {
            bundle.push_str(prev);
        }
        bundle
    }
}

/// How long things live, and when they are renewed.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Validity of a new CA.
    pub ca: Duration,
    /// Validity of a new serving certificate (capped at the CA's).
    pub cert: Duration,
    /// Renew what expires within this long.
    pub renew_before: Duration,
}

/// What [`plan_rotation`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// A new CA is needed.
    pub new_ca: bool,
    /// A new serving certificate is needed.
    pub new_cert: bool,
}

/// Decides what to renew at `now` for the wanted `names`.
pub fn plan_rotation(
    existing: Option<&Material>,
    names: &[String],
    life: &Lifetimes,
    now: DateTime<Utc>,
) -> Rotation {
    let soon = |t: Option<DateTime<Utc>>| {
        t.is_none_or(|t| {
            t - now < chrono::Duration::from_std(life.renew_before).unwrap_or_default()
        })
    };
    let Some(m) = existing.filter(|m| !m.ca_cert.is_empty() && !m.cert.is_empty()) else {
        return Rotation {
            new_ca: true,
            new_cert: true,
        };
    };
    let new_ca = soon(m.ca_not_after);
    let new_cert = new_ca || soon(m.cert_not_after) || m.names != names;
    Rotation { new_ca, new_cert }
}

fn params(
    names: &[String],
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.not_before = to_offset(now - chrono::Duration::minutes(5));
    p.not_after = to_offset(not_after);
    for name in names {
        p.subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
    }
    Ok(p)
}

fn ca_params(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Result<CertificateParams, Error> {
    let mut p = params(&[], not_after, now)?;
    p.distinguished_name.push(DnType::CommonName, CA_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Performs a rotation: returns the new material.
pub fn rotate(
    existing: Option<&Material>,
    names: &[String],
    rotation: &Rotation,
    life: &Lifetimes,
    now: DateTime<Utc>,
) -> Result<Material, Error> {
    let mut m = existing.cloned().unwrap_or_default();
    let dur = |d: Duration| {
        chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::days(3650))
    };
    if rotation.new_ca {
        let key = KeyPair::generate()?;
        let not_after = now + dur(life.ca);
        let cert = ca_params(not_after, now)?.self_signed(&key)?;
        // The old CA stays trusted while it is valid: certificates it signed may still be served.
        let old_valid = m.ca_not_after.is_some_and(|t| t > now) && !m.ca_cert.is_empty();
        m.previous_ca = old_valid.then(|| m.ca_cert.clone());
        m.previous_ca_not_after = if old_valid { m.ca_not_after } else { None };
        m.ca_cert = cert.pem();
        m.ca_key = key.serialize_pem();
        m.ca_not_after = Some(not_after);
    }
    if m.previous_ca_not_after.is_some_and(|t| t <= now) {
        m.previous_ca = None;
        m.previous_ca_not_after = None;
    }
    if rotation.new_cert {
        let ca_key = KeyPair::from_pem(&m.ca_key)?;
        let ca_not_after = m.ca_not_after.unwrap_or(now + dur(life.ca));
        let issuer = Issuer::new(ca_params(ca_not_after, now)?, ca_key);
        let key = KeyPair::generate()?;
        let not_after = (now + dur(life.cert)).min(ca_not_after);
        let mut p = params(names, not_after, now)?;
        p.distinguished_name.push(
            DnType::CommonName,
            names
                .first()
                .cloned()
                .unwrap_or_else(|| "hotconf-webhook".into()),
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, &issuer)?;
        m.cert = cert.pem();
        m.key = key.serialize_pem();
        m.cert_not_after = Some(not_after);
        m.names = names.to_vec();
    }
    Ok(m)
}

fn rfc3339(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn parse_time(s: Option<&String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Reads material from the Secret's data and annotations.
pub fn from_secret(secret: &Secret) -> Material {
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    Material {
        ca_cert: text("ca.crt"),
        ca_key: text("ca.key"),
        ca_not_after: parse_time(ann.get(ANN_CA_NOT_AFTER)),
        previous_ca: Some(text("ca-previous.crt")).filter(|s| !s.is_empty()),
        previous_ca_not_after: parse_time(ann.get(ANN_PREVIOUS_CA_NOT_AFTER)),
        cert: text("tls.crt"),
        key: text("tls.key"),
        cert_not_after: parse_time(ann.get(ANN_CERT_NOT_AFTER)),
        names: ann
            .get(ANN_SANS)
            .map(|s| {
                s.split(',')
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The Secret holding `m`.
pub fn to_secret(name: &str, namespace: &str, m: &Material) -> Secret {
    let mut data = BTreeMap::from([
        (
            "ca.crt".to_string(),
            ByteString(m.ca_cert.clone().into_bytes()),
        ),
        (
            "ca.key".to_string(),
            ByteString(m.ca_key.clone().into_bytes()),
        ),
        (
            "tls.crt".to_string(),
            ByteString(m.cert.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(m.key.clone().into_bytes()),
        ),
    ]);
    if let Some(prev) = &m.previous_ca {
        data.insert(
            "ca-previous.crt".into(),
            ByteString(prev.clone().into_bytes()),
        );
    }
    let mut ann = BTreeMap::new();
    for (k, v) in [
        (ANN_CA_NOT_AFTER, rfc3339(m.ca_not_after)),
        (ANN_PREVIOUS_CA_NOT_AFTER, rfc3339(m.previous_ca_not_after)),
        (ANN_CERT_NOT_AFTER, rfc3339(m.cert_not_after)),
        (ANN_SANS, Some(m.names.join(","))),
    ] {
        if let Some(v) = v {
            ann.insert(k.to_string(), v);
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                crate::crd::names::MANAGED_BY.to_string(),
                "hotconf".to_string(),
            )])),
            annotations: Some(ann),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Self-managed certificates in a Secret, and the webhook configurations to keep trusting them.
pub struct SelfManaged {
    /// The client.
    pub client: Client,
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The names the serving certificate must carry.
    pub names: Vec<String>,
    /// Lifetimes.
    pub life: Lifetimes,
    /// ValidatingWebhookConfigurations whose caBundle to keep current.
    pub validating: Vec<String>,
    /// MutatingWebhookConfigurations whose caBundle to keep current.
    pub mutating: Vec<String>,
}

impl SelfManaged {
    /// Loads the material, renews what is due (storing it; another replica's concurrent
    /// renewal wins and is reused), and brings the caBundles up to date. Returns the material
    /// to serve and whether it changed since `current`.
    pub async fn ensure(&self, current: Option<&Material>) -> Result<Material, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..5 {
            let existing = api.get_opt(&self.secret).await?;
            let loaded = existing.as_ref().map(from_secret);
            let now = Utc::now();
            let rotation = plan_rotation(loaded.as_ref(), &self.names, &self.life, now);
            let material = if rotation.new_ca || rotation.new_cert {
                let m = rotate(loaded.as_ref(), &self.names, &rotation, &self.life, now)?;
                let mut secret = to_secret(&self.secret, &self.namespace, &m);
                let written = match &existing {
                    Some(old) => {
                        secret.metadata.resource_version = old.metadata.resource_version.clone();
                        api.replace(&self.secret, &PostParams::default(), &secret)
                            .await
                    }
                    None => api.create(&PostParams::default(), &secret).await,
                };
                match written {
                    Ok(_) => {
                        tracing::info!(secret = %self.secret, new_ca = rotation.new_ca, new_cert = rotation.new_cert, not_after = ?m.cert_not_after, "webhook certificate renewed");
                        m
                    }
                    // Another replica renewed first: use what it stored.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                loaded.unwrap_or_default()
            };
            self.publish_bundle(&material.bundle()).await?;
            if current != Some(&material) {
                tracing::debug!("webhook certificate loaded");
            }
            return Ok(material);
        }
        Err(Error::Webhook {
            what: "the webhook certificate Secret kept changing under us".into(),
            source: None,
        })
    }

    /// Sets `caBundle` on every webhook of the named configurations (only where it differs).
    pub async fn publish_bundle(&self, bundle: &str) -> Result<(), Error> {
        for (kind, names) in [
            ("ValidatingWebhookConfiguration", &self.validating),
            ("MutatingWebhookConfiguration", &self.mutating),
        ] {
            let resource = ApiResource {
                group: "admissionregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: kind.into(),
                plural: format!("{}s", kind.to_lowercase()),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            for name in names {
                let Some(cfg) = api.get_opt(name).await? else {
                    tracing::warn!(%kind, %name, "webhook configuration not found; not trusted yet");
                    continue;
                };
                let Some(hooks) = with_bundle(cfg.data.get("webhooks"), bundle) else {
                    continue;
                };
                let patch = serde_json::json!({ "webhooks": hooks });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                tracing::info!(%kind, %name, "caBundle updated");
            }
        }
        Ok(())
    }
}

/// The webhooks list with `caBundle` set on each, or `None` when every one already has it.
fn with_bundle(webhooks: Option<&serde_json::Value>, bundle: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    let mut hooks = webhooks?.as_array()?.clone();
    if hooks
        .iter()
        .all(|w| w.pointer("/clientConfig/caBundle").and_then(|b| b.as_str()) == Some(&encoded))
    {
        return None;
    }
    for w in &mut hooks {
        w["clientConfig"]["caBundle"] = serde_json::Value::String(encoded.clone());
    }
    Some(serde_json::Value::Array(hooks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life() -> Lifetimes {
        Lifetimes {
            ca: Duration::from_secs(3600 * 24 * 365),
            cert: Duration::from_secs(3600 * 24 * 30),
            renew_before: Duration::from_secs(3600 * 24 * 7),
        }
    }

    fn names() -> Vec<String> {
        vec!["hotconf-webhook.hotconf.svc".into(), "127.0.0.1".into()]
    }

    #[test]
    fn first_start_creates_everything() {
        let now = Utc::now();
        let r = plan_rotation(None, &names(), &life(), now);
        assert_eq!(
            r,
            Rotation {
                new_ca: true,
                new_cert: true
            }
        );
        let m = rotate(None, &names(), &r, &life(), now).unwrap();
        assert!(m.ca_cert.contains("BEGIN CERTIFICATE"));
        assert!(m.key.contains("PRIVATE KEY"));
        assert_eq!(m.previous_ca, None);
        assert_eq!(m.bundle(), m.ca_cert);
        // Nothing is due right after.
        assert_eq!(
            plan_rotation(Some(&m), &names(), &life(), now),
            Rotation {
                new_ca: false,
                new_cert: false
            }
        );
        // The Secret round-trips.
        let back = from_secret(&to_secret("s", "ns", &m));
        assert_eq!(back.cert, m.cert);
        assert_eq!(back.names, m.names);
        assert_eq!(
            back.cert_not_after.map(|t| t.timestamp()),
            m.cert_not_after.map(|t| t.timestamp())
        );
    }

    #[test]
    fn a_certificate_near_expiry_is_renewed_with_the_same_ca() {
        let now = Utc::now();
        let m = rotate(
            None,
            &names(),
            &Rotation {
                new_ca: true,
                new_cert: true,
            },
            &life(),
            now,
        )
        .unwrap();
        let later = now + chrono::Duration::days(25);
        let r = plan_rotation(Some(&m), &names(), &life(), later);
        assert_eq!(
            r,
            Rotation {
                new_ca: false,
                new_cert: true
            }
        );
        let renewed = rotate(Some(&m), &names(), &r, &life(), later).unwrap();
        assert_eq!(renewed.ca_cert, m.ca_cert);
        assert_ne!(renewed.cert, m.cert);
        assert_eq!(renewed.bundle(), m.bundle());
    }

    #[test]
    fn a_new_ca_is_bundled_with_the_old_one() {
        let now = Utc::now();
        let m = rotate(
            None,
            &names(),
            &Rotation {
                new_ca: true,
                new_cert: true,
            },
            &life(),
            now,
        )
        .unwrap();
        let later = now + chrono::Duration::days(360);
        let r = plan_rotation(Some(&m), &names(), &life(), later);
        assert_eq!(
            r,
            Rotation {
                new_ca: true,
                new_cert: true
            }
        );
        let renewed = rotate(Some(&m), &names(), &r, &life(), later).unwrap();
        assert_ne!(renewed.ca_cert, m.ca_cert);
        assert_eq!(renewed.previous_ca.as_deref(), Some(m.ca_cert.as_str()));
        assert!(
            renewed.bundle().contains(&m.ca_cert) && renewed.bundle().contains(&renewed.ca_cert)
        );
    }

    #[test]
    fn the_bundle_is_set_on_every_webhook_once() {
        let hooks =
            serde_json::json!([{"clientConfig": {"url": "https://x"}}, {"clientConfig": {}}]);
        let set = with_bundle(Some(&hooks), "PEM").unwrap();
        assert_eq!(set[0]["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(set[1]["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(set[0]["clientConfig"]["url"], "https://x");
        assert_eq!(with_bundle(Some(&set), "PEM"), None, "nothing to write");
    }

    #[test]
    fn changed_names_reissue_the_certificate() {
        let now = Utc::now();
        let m = rotate(
            None,
            &names(),
            &Rotation {
                new_ca: true,
                new_cert: true,
            },
            &life(),
            now,
        )
        .unwrap();
        let other = vec!["other.svc".to_string()];
        assert_eq!(
            plan_rotation(Some(&m), &other, &life(), now),
            Rotation {
                new_ca: false,
                new_cert: true
            }
        );
    }
}
