//! Proof that `hotconf.dev/changed-by` came from the mutating webhook (SPEC §5.4).
//!
//! Anyone who may edit a RuntimeConfig may also set its annotations, so the annotation alone
//! proves nothing: without the webhook, a user could name someone else as the author. The
//! webhook therefore writes a second annotation, `hotconf.dev/changed-by-proof`, an HMAC-SHA256
//! over the object's kind, namespace and name, the user, and the digest of the spec it admitted.
//! The operator accepts the author only when that proof verifies for the object as it is now
//! (so the same spec the webhook saw); otherwise it falls back to the field manager that last
//! set the spec. A copied proof names the author of an identical spec of the same object only.
//!
//! The key is derived from key material only the operator's replicas hold: the webhook's
//! self-managed CA key (kept in its Secret across serving-certificate renewals), or, with a
//! mounted certificate (`--webhook-cert-dir`), the serving key. Every replica derives the same
//! key; the newest two are kept, so a proof made just before a rotation still verifies. Without
//! the webhook there is no key, and no annotation is trusted.

use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The proof annotation's value prefix (the scheme's version).
const SCHEME: &str = "v1.";
const DOMAIN: &[u8] = b"hotconf.dev/changed-by-proof/v1\0";
const KEPT: usize = 2;

type HmacSha256 = Hmac<Sha256>;

/// What a proof is about: one object, one user, one spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The object's kind.
    pub kind: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The user the webhook saw.
    pub user: &'a str,
    /// [`spec_digest`] of the admitted object.
    pub spec: &'a str,
}

impl Claim<'_> {
    fn message(&self) -> Vec<u8> {
        // NUL-separated: none of the parts may contain a NUL (Kubernetes names and user names
        // do not).
        [self.kind, self.namespace, self.name, self.user, self.spec]
            .join("\0")
            .into_bytes()
    }
}

/// The digest of an object's spec, as both the webhook and the operator compute it: the hash of
/// the canonical JSON of the typed `spec` (so defaults and field order do not matter).
pub fn spec_digest<S: Serialize>(spec: &S) -> String {
    crate::document::hash(&serde_json::to_value(spec).unwrap_or_default())
}

/// The attribution keys this replica knows, newest first.
#[derive(Debug, Default)]
pub struct Keys(RwLock<Vec<[u8; 32]>>);

impl Keys {
    /// Derives a key from `material` (a private key in PEM) and makes it the newest.
    pub fn learn(&self, material: &[u8]) {
        let key: [u8; 32] = Sha256::new()
            .chain_update(DOMAIN)
            .chain_update(material)
            .finalize()
            .into();
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        if keys.first() == Some(&key) {
            return;
        }
        keys.retain(|k| *k != key);
        keys.insert(0, key);
        keys.truncate(KEPT);
    }

    /// The proof of `claim` with the newest key, `None` before a key is known.
    pub fn sign(&self, claim: &Claim<'_>) -> Option<String> {
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.first()?;
        let tag = mac(key, claim).finalize().into_bytes();
        Some(format!("{SCHEME}{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// Whether `proof` is a proof of `claim` under one of the known keys.
    pub fn verify(&self, claim: &Claim<'_>, proof: &str) -> bool {
        let Some(bytes) = proof
            .strip_prefix(SCHEME)
            .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
        else {
            return false;
        };
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .any(|key| mac(key, claim).verify_slice(&bytes).is_ok())
    }
}

fn mac(key: &[u8; 32], claim: &Claim<'_>) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(&claim.message());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(user: &'a str, spec: &'a str) -> Claim<'a> {
        Claim {
            kind: "RuntimeConfig",
            namespace: "shop",
            name: "app",
            user,
            spec,
        }
    }

    #[test]
    fn a_proof_verifies_for_its_own_claim_only() {
        let keys = Keys::default();
        assert_eq!(keys.sign(&claim("alice", "s1")), None, "no key, no proof");
        keys.learn(b"-----BEGIN PRIVATE KEY----- one");
        let proof = keys.sign(&claim("alice", "s1")).unwrap();
        assert!(proof.starts_with("v1."));
        assert!(keys.verify(&claim("alice", "s1"), &proof));
        assert!(
            !keys.verify(&claim("mallory", "s1"), &proof),
            "another user"
        );
        assert!(!keys.verify(&claim("alice", "s2"), &proof), "another spec");
        let other = Claim {
            name: "other",
            ..claim("alice", "s1")
        };
        assert!(!keys.verify(&other, &proof), "another object");
        for forged in ["", "v1.", "v1.!!", "alice", &proof.replace("v1.", "v2.")] {
            assert!(!keys.verify(&claim("alice", "s1"), forged), "{forged:?}");
        }
        // Without the key material, nobody can make one.
        let outsider = Keys::default();
        outsider.learn(b"a guess");
        assert_ne!(outsider.sign(&claim("alice", "s1")), Some(proof));
    }

    #[test]
    fn a_proof_made_before_a_rotation_still_verifies_and_older_ones_expire() {
        let keys = Keys::default();
        keys.learn(b"ca-1");
        let before = keys.sign(&claim("alice", "s")).unwrap();
        keys.learn(b"ca-2");
        keys.learn(b"ca-2");
        assert!(keys.verify(&claim("alice", "s"), &before));
        keys.learn(b"ca-3");
        assert!(!keys.verify(&claim("alice", "s"), &before));
    }

    #[test]
    fn the_spec_digest_ignores_field_order() {
        let a = serde_json::json!({"values": {"a": 1, "b": 2}, "paused": false});
        let b = serde_json::json!({"paused": false, "values": {"b": 2, "a": 1}});
        assert_eq!(spec_digest(&a), spec_digest(&b));
        let c = serde_json::json!({"values": {"a": 2, "b": 2}, "paused": false});
        assert_ne!(spec_digest(&a), spec_digest(&c));
    }
}
