//! Feature-flag evaluation: FNV-1a bucketing of `flag/subject` into 0..100, with allow and deny
//! lists (SPEC.md §3). Every client must reproduce the test vectors below.

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
