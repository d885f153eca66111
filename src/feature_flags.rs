//! Feature-flag evaluation: FNV-1a bucketing of `flag/subject` into 0..100, with allow and deny
//! lists (SPEC.md §3), and flagd's `fractional` bucketing in its current ("v3") form (SPEC.md
//! §3.1). Every client must reproduce the test vectors below.
//!
//! flagd v3, as `openfeature-flagd-core` 2.0.0 implements it and the flagd-testbed's
//! `@fractional-v3` scenarios check (the older v2 form, MurmurHash3 of the concatenated text,
//! is not supported): the bucketing value is the canonical CBOR encoding of
//! `[flagKey, targetingKey]` (RFC 8949 §4.2.1: definite lengths, shortest heads), hashed with
//! MurmurHash3 x86_32, seed 0, read unsigned; `bucket = (hash × totalWeight) >> 32`; the variant
//! is the first whose cumulative weight exceeds the bucket, in the order the weights are given.

use serde_json::Value;

/// FNV-1a, 32 bit, over the bytes.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The subject's bucket for a flag, 0..100: `fnv1a32(flag + "/" + subject) % 100`.
pub fn bucket(flag: &str, subject: &str) -> u32 {
    fnv1a32(format!("{flag}/{subject}").as_bytes()) % 100
}

/// The flagd v3 bucketing hash of a subject for a flag: MurmurHash3 x86_32 (seed 0) of the
/// canonical CBOR encoding of `[flag, subject]`.
pub fn flagd_hash(flag: &str, subject: &str) -> u32 {
    let mut cbor = Vec::with_capacity(flag.len() + subject.len() + 10);
    // Two text strings in a definite-length array: ciborium writes the shortest heads, which is
    // the canonical form for this shape.
    ciborium::into_writer(&(flag, subject), &mut cbor).expect("writing CBOR to memory");
    murmur3::murmur3_32(&mut cbor.as_slice(), 0).expect("hashing memory")
}

/// flagd's `fractional` for a subject: the variant whose cumulative weight range holds
/// `(flagd_hash × totalWeight) >> 32`, weights in the order given; `None` when the weights sum
/// to 0 or exceed `i32::MAX` (flagd refuses those too). Negative weights count as 0, as in flagd.
pub fn fractional<'a>(flag: &str, subject: &str, weights: &[(&'a str, i64)]) -> Option<&'a str> {
    let total: i64 = weights.iter().map(|(_, w)| (*w).max(0)).sum();
    if total <= 0 || total > i64::from(i32::MAX) {
        return None;
    }
    let bucket = (u64::from(flagd_hash(flag, subject)) * total as u64) >> 32;
    let mut end = 0u64;
    weights.iter().find_map(|(variant, w)| {
        end += (*w).max(0) as u64;
        (bucket < end).then_some(*variant)
    })
}

/// Why a flag evaluated as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The subject is in `deny`.
    Denied,
    /// `enabled: false`.
    Disabled,
    /// The subject is in `allow`.
    Allowed,
    /// The rollout bucket decided.
    Rollout,
    /// No such flag.
    Unknown,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 5] = [
        Reason::Denied,
        Reason::Disabled,
        Reason::Allowed,
        Reason::Rollout,
        Reason::Unknown,
    ];

    /// A short name for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Denied => "deny",
            Reason::Disabled => "disabled",
            Reason::Allowed => "allow",
            Reason::Rollout => "rollout",
            Reason::Unknown => "unknown",
        }
    }
}

/// Whether a flag (as it appears in the effective document's `featureFlags`) is on for a
/// subject. `deny` wins over everything, `enabled: false` turns it off for everyone else, then
/// `allow` forces it on, then the rollout percentage decides.
pub fn is_enabled(name: &str, flag: &Value, subject: &str) -> bool {
    evaluate(name, flag, subject).0
}

/// [`is_enabled`], with the reason.
pub fn evaluate(name: &str, flag: &Value, subject: &str) -> (bool, Reason) {
    let listed = |list: &str| {
        flag.get(list)
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|s| s.as_str() == Some(subject)))
    };
    if listed("deny") {
        return (false, Reason::Denied);
    }
    if !flag
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return (false, Reason::Disabled);
    }
    if listed("allow") {
        return (true, Reason::Allowed);
    }
    let pct = flag
        .get("rolloutPercentage")
        .and_then(Value::as_i64)
        .unwrap_or(100)
        .clamp(0, 100) as u32;
    (bucket(name, subject) < pct, Reason::Rollout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flagd_v3_vectors() {
        // SPEC.md §3.1: weights on 25 / off 75.
        let weights = [("on", 25), ("off", 75)];
        for (subject, hash, variant) in [
            ("user-42", 0xb022_40ce, "off"),
            ("user-43", 0x2a2b_f08f, "on"),
            ("alice", 0x6f65_478b, "off"),
        ] {
            assert_eq!(flagd_hash("new_ui", subject), hash, "{subject}");
            assert_eq!(
                fractional("new_ui", subject, &weights),
                Some(variant),
                "{subject}"
            );
        }
        assert_eq!(fractional("new_ui", "alice", &[("a", 0), ("b", -3)]), None);
        assert_eq!(fractional("new_ui", "alice", &[("only", 1)]), Some("only"));
        let over = [("a", i64::from(i32::MAX)), ("b", 1)];
        assert_eq!(fractional("new_ui", "alice", &over), None);
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(fnv1a32(b"new_ui/user-42"), 0x195f_da57);
        assert_eq!(bucket("new_ui", "user-42"), 15);
        assert_eq!(fnv1a32(b"new_ui/user-43"), 0x185f_d8c4);
        assert_eq!(bucket("new_ui", "user-43"), 96);
        assert_eq!(fnv1a32(b"beta_features/alice"), 0xd3bd_7048);
        assert_eq!(bucket("beta_features", "alice"), 24);
    }

    #[test]
    fn rollout_allow_deny_enabled() {
        let flag = json!({"enabled": true, "rolloutPercentage": 25, "allow": ["user-43"], "deny": ["user-42"]});
        assert!(
            !is_enabled("new_ui", &flag, "user-42"),
            "deny wins over the bucket"
        );
        assert!(
            is_enabled("new_ui", &flag, "user-43"),
            "allow wins over the bucket"
        );
        let plain = json!({"enabled": true, "rolloutPercentage": 25});
        assert!(is_enabled("new_ui", &plain, "user-42"), "bucket 15 < 25");
        assert!(!is_enabled("new_ui", &plain, "user-43"), "bucket 96 >= 25");
        let off = json!({"enabled": false, "rolloutPercentage": 100, "allow": ["user-42"]});
        assert!(
            !is_enabled("new_ui", &off, "user-42"),
            "disabled is off for everyone"
        );
        let full = json!({"enabled": true});
        assert!(
            is_enabled("new_ui", &full, "user-43"),
            "no percentage means everyone"
        );
    }
}
