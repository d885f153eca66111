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
/// `allow` forces it on, then the rollout percentage decides. A variant flag is on when it
/// resolves to `true`.
pub fn is_enabled(name: &str, flag: &Value, subject: &str) -> bool {
    if flag.get("variants").is_some() {
        return resolve(name, flag, Some(subject)).is_some_and(|r| r.value == Value::Bool(true));
    }
    evaluate(name, flag, subject).0
}

/// [`is_enabled`] of an on/off flag, with the reason.
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
    (rolled_out(name, flag, subject), Reason::Rollout)
}

// Whether the subject is in an on/off flag's rollout: FNV-1a, or flagd's `fractional` over
// `[on: pct, off: 100 - pct]` with `bucketing: flagd`.
fn rolled_out(name: &str, flag: &Value, subject: &str) -> bool {
    let pct = flag
        .get("rolloutPercentage")
        .and_then(Value::as_i64)
        .unwrap_or(100)
        .clamp(0, 100);
    if flag.get("bucketing").and_then(Value::as_str) == Some("flagd") {
        return fractional(name, subject, &[("on", pct), ("off", 100 - pct)]) == Some("on");
    }
    bucket(name, subject) < pct as u32
}

/// The flags of an effective document as a flagd flag-definition document
/// (`target.format: flagd`): what flagd (a sidecar, or an in-process provider in any language)
/// evaluates to the same variants as [`resolve`], for flags bucketed by flagd.
///
/// - A variant flag keeps its `variants` and `defaultVariant`; `targets` become an `if` over `{"in": [{"var": "targetingKey"}, [...]]}`
///   and `fractional` its last branch, `{"fractional": [[variant, weight], ...]}` in variant-name
///   order (flagd's shorthand, bucketing by `[flagKey, targetingKey]`).
/// - An on/off flag has the variants `on: true` and `off: false`: `deny` and `allow` are the
///   first branches, then the rollout as `fractional: [[on, pct], [off, 100 - pct]]`; all in
///   or nobody makes `on` or `off` the default.
/// - `enabled: false` is `defaultVariant` for everyone (§3.1): the flag stays `ENABLED` for flagd,
///   with no targeting and the flag metadata `disabled: true`. flagd's `state: DISABLED` would
///   answer with the caller's default value instead, which is not what hotconf resolves.
///
/// Flags bucketed by FNV-1a cannot be written for flagd; validation refuses them with this
/// format.
pub fn flagd_definition(document: &Value) -> Value {
    let flags: serde_json::Map<String, Value> = document
        .get("featureFlags")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, flag)| (name.clone(), flagd_flag(flag)))
        .collect();
    serde_json::json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": flags,
    })
}

fn flagd_flag(flag: &Value) -> Value {
    use serde_json::json;
    let enabled = flag
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let listed = |subjects: &Value| json!({"in": [{"var": "targetingKey"}, subjects]});
    let mut branches: Vec<Value> = Vec::new();
    let (variants, default, rest) = if let Some(variants) = flag.get("variants") {
        for (variant, subjects) in flag
            .get("targets")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if subjects.as_array().is_some_and(|l| !l.is_empty()) {
                branches.extend([listed(subjects), json!(variant)]);
            }
        }
        let weights: Vec<Value> = flag
            .get("fractional")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(v, w)| json!([v, w]))
            .collect();
        let rest = (!weights.is_empty()).then(|| json!({"fractional": weights}));
        (variants.clone(), flag["defaultVariant"].clone(), rest)
    } else {
        for (list, variant) in [("deny", "off"), ("allow", "on")] {
            if let Some(subjects) = flag
                .get(list)
                .filter(|l| l.as_array().is_some_and(|l| !l.is_empty()))
            {
                branches.extend([listed(subjects), json!(variant)]);
            }
        }
        let pct = rollout_of(flag).clamp(0, 100);
        let (default, rest) = match pct {
            100 => ("on", None),
            0 => ("off", None),
            _ => (
                "off",
                Some(json!({"fractional": [["on", pct], ["off", 100 - pct]]})),
            ),
        };
        let default = if enabled { default } else { "off" };
        (json!({"on": true, "off": false}), json!(default), rest)
    };
    if !enabled {
        return json!({"state": "ENABLED", "variants": variants, "defaultVariant": default,
            "metadata": {"disabled": true}});
    }
    let targeting = match (branches.is_empty(), rest) {
        (true, None) => None,
        (true, Some(rest)) => Some(rest),
        (false, rest) => {
            branches.extend(rest);
            Some(json!({"if": branches}))
        }
    };
    let mut out = json!({"state": "ENABLED", "variants": variants, "defaultVariant": default});
    if let Some(targeting) = targeting {
        out["targeting"] = targeting;
    }
    out
}

/// Why a flag resolved as it did, in OpenFeature's terms (the OFREP `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The flag has one value for everyone.
    Static,
    /// A listed subject (`targets`, `allow`, `deny`).
    TargetingMatch,
    /// The subject's bucket in a split or rollout.
    Split,
    /// `enabled: false`.
    Disabled,
    /// The default: the split needs a subject and there is none, or the flag targets listed
    /// subjects and this one is not among them.
    Default,
}

impl Resolved {
    /// The OpenFeature reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolved::Static => "STATIC",
            Resolved::TargetingMatch => "TARGETING_MATCH",
            Resolved::Split => "SPLIT",
            Resolved::Disabled => "DISABLED",
            Resolved::Default => "DEFAULT",
        }
    }
}

/// What a flag resolves to for a subject.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The value: the variant's, or `true`/`false` for an on/off flag.
    pub value: Value,
    /// The variant's name (`on`/`off` for an on/off flag).
    pub variant: String,
    /// Why.
    pub reason: Resolved,
    /// A split answered with its default because there was no subject to bucket: OFREP and
    /// the provider answer TARGETING_KEY_MISSING instead.
    pub unbucketed: bool,
}

/// Resolves a flag (as the effective document carries it) for a subject (`None`: none known),
/// whether it has variants (SPEC.md §3.1) or is on/off (SPEC.md §3). `None` for an entry that
/// is neither (its default variant is missing).
pub fn resolve(name: &str, flag: &Value, subject: Option<&str>) -> Option<Resolution> {
    let Some(variants) = flag.get("variants").and_then(Value::as_object) else {
        return Some(resolve_on_off(name, flag, subject));
    };
    let pick = |variant: &str, reason| {
        Some(Resolution {
            value: variants.get(variant)?.clone(),
            variant: variant.to_string(),
            reason,
            unbucketed: false,
        })
    };
    let default = flag.get("defaultVariant").and_then(Value::as_str)?;
    if !flag
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return pick(default, Resolved::Disabled);
    }
    let targets = flag.get("targets").and_then(Value::as_object);
    if let Some(subject) = subject
        && let Some((variant, _)) = targets.into_iter().flatten().find(|(_, subjects)| {
            subjects
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s.as_str() == Some(subject)))
        })
    {
        return pick(variant, Resolved::TargetingMatch);
    }
    let weights: Vec<(&str, i64)> = flag
        .get("fractional")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(v, w)| (v.as_str(), w.as_i64().unwrap_or(0)))
        .collect();
    if weights.is_empty() {
        // Targeting that listed others (or no subject at all) is a default, as flagd reports it.
        let targeted = targets
            .into_iter()
            .flatten()
            .any(|(_, l)| l.as_array().is_some_and(|l| !l.is_empty()));
        return pick(
            default,
            if targeted {
                Resolved::Default
            } else {
                Resolved::Static
            },
        );
    }
    let Some(subject) = subject else {
        return pick(default, Resolved::Default).map(|r| Resolution {
            unbucketed: true,
            ..r
        });
    };
    let chosen = match flag.get("bucketing").and_then(Value::as_str) {
        Some("fnv1a") => fnv1a_split(name, subject, &weights),
        _ => fractional(name, subject, &weights),
    };
    match chosen {
        Some(variant) => pick(variant, Resolved::Split),
        None => pick(default, Resolved::Default),
    }
}

// FNV-1a over weights: the variant whose cumulative range holds `fnv1a32(flag/subject) % total`.
fn fnv1a_split<'a>(name: &str, subject: &str, weights: &[(&'a str, i64)]) -> Option<&'a str> {
    let total: i64 = weights.iter().map(|(_, w)| (*w).max(0)).sum();
    if total <= 0 {
        return None;
    }
    let point = i64::from(fnv1a32(format!("{name}/{subject}").as_bytes())) % total;
    let mut end = 0;
    weights.iter().find_map(|(variant, w)| {
        end += (*w).max(0);
        (point < end).then_some(*variant)
    })
}

fn resolve_on_off(name: &str, flag: &Value, subject: Option<&str>) -> Resolution {
    // All in or nobody: one value unless `allow` or `deny` lists someone, when it is the default
    // for everyone else (flagd's reasons for the same definition).
    let listed = ["allow", "deny"].iter().any(|l| {
        flag.get(l)
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
    });
    let fixed = if listed {
        Resolved::Default
    } else {
        Resolved::Static
    };
    let mut unbucketed = false;
    let (on, reason) = match subject {
        Some(subject) => match evaluate(name, flag, subject) {
            (on, Reason::Denied | Reason::Allowed) => (on, Resolved::TargetingMatch),
            (on, Reason::Disabled) => (on, Resolved::Disabled),
            (on, _) if matches!(rollout_of(flag), 0 | 100) => (on, fixed),
            (on, _) => (on, Resolved::Split),
        },
        None if !flag
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(false) =>
        {
            (false, Resolved::Disabled)
        }
        None if rollout_of(flag) >= 100 => (true, fixed),
        None if rollout_of(flag) <= 0 => (false, fixed),
        None => {
            unbucketed = true;
            (false, Resolved::Default)
        }
    };
    Resolution {
        value: Value::Bool(on),
        variant: if on { "on" } else { "off" }.to_string(),
        reason,
        unbucketed,
    }
}

fn rollout_of(flag: &Value) -> i64 {
    flag.get("rolloutPercentage")
        .and_then(Value::as_i64)
        .unwrap_or(100)
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

    fn checkout() -> Value {
        json!({
            "variants": {"classic": "v1", "streamlined": "v2"},
            "defaultVariant": "classic",
            "fractional": {"classic": 50, "streamlined": 50},
            "targets": {"streamlined": ["user-1", "beta-tester"]},
            "enabled": true,
            "bucketing": "flagd",
        })
    }

    #[test]
    fn a_variant_flag_resolves_with_its_reason() {
        let flag = checkout();
        let r = resolve("checkout_flow", &flag, Some("beta-tester")).unwrap();
        assert_eq!(
            (r.variant.as_str(), r.reason),
            ("streamlined", Resolved::TargetingMatch)
        );
        assert_eq!(r.value, json!("v2"));
        // The split is flagd's, over the weights in variant-name order.
        let weights = [("classic", 50), ("streamlined", 50)];
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let subject = format!("u{i}");
            let r = resolve("checkout_flow", &flag, Some(&subject)).unwrap();
            assert_eq!(r.reason, Resolved::Split);
            assert_eq!(
                Some(r.variant.as_str()),
                fractional("checkout_flow", &subject, &weights)
            );
            seen.insert(r.variant);
        }
        assert_eq!(seen.len(), 2, "both sides of the split");
        let r = resolve("checkout_flow", &flag, None).unwrap();
        assert_eq!(
            (r.variant.as_str(), r.reason, r.unbucketed),
            ("classic", Resolved::Default, true)
        );
        let mut off = flag.clone();
        off["enabled"] = json!(false);
        let r = resolve("checkout_flow", &off, Some("beta-tester")).unwrap();
        assert_eq!(
            (r.variant.as_str(), r.reason),
            ("classic", Resolved::Disabled)
        );
        let mut fixed = flag.clone();
        fixed["fractional"] = json!({});
        // Targets that list others: the default, as flagd reports it; no targets: static.
        let r = resolve("checkout_flow", &fixed, Some("anyone")).unwrap();
        assert_eq!((r.value, r.reason), (json!("v1"), Resolved::Default));
        // No subject for targets (found by an acceptance run against flagd): DEFAULT too, and
        // no split waits for one.
        let r = resolve("checkout_flow", &fixed, None).unwrap();
        assert_eq!(
            (r.value, r.reason, r.unbucketed),
            (json!("v1"), Resolved::Default, false)
        );
        fixed["targets"] = json!({});
        let r = resolve("checkout_flow", &fixed, Some("anyone")).unwrap();
        assert_eq!((r.value, r.reason), (json!("v1"), Resolved::Static));
        let mut fnv = flag;
        fnv["bucketing"] = json!("fnv1a");
        let r = resolve("checkout_flow", &fnv, Some("anyone")).unwrap();
        assert_eq!(
            Some(r.variant.as_str()),
            fnv1a_split("checkout_flow", "anyone", &weights)
        );
    }

    #[test]
    fn an_on_off_flag_resolves_as_it_evaluates() {
        let flag =
            json!({"enabled": true, "rolloutPercentage": 25, "allow": ["vip"], "deny": ["x"]});
        for subject in ["user-42", "user-43", "vip", "x"] {
            let r = resolve("new_ui", &flag, Some(subject)).unwrap();
            assert_eq!(
                r.value,
                json!(is_enabled("new_ui", &flag, subject)),
                "{subject}"
            );
        }
        assert_eq!(
            resolve("new_ui", &flag, Some("vip")).unwrap().reason,
            Resolved::TargetingMatch
        );
        assert_eq!(
            resolve("new_ui", &flag, Some("user-42")).unwrap().reason,
            Resolved::Split
        );
        let r = resolve("new_ui", &flag, None).unwrap();
        assert_eq!((r.reason, r.unbucketed), (Resolved::Default, true));
        let all = json!({"enabled": true, "rolloutPercentage": 100, "allow": [], "deny": []});
        assert_eq!(resolve("f", &all, None).unwrap().reason, Resolved::Static);
        let but = json!({"enabled": true, "rolloutPercentage": 100, "allow": [], "deny": ["x"]});
        let r = resolve("f", &but, None).unwrap();
        assert_eq!((r.reason, r.unbucketed), (Resolved::Default, false));
        assert_eq!(
            resolve("f", &but, Some("y")).unwrap().reason,
            Resolved::Default
        );
        assert_eq!(
            resolve("f", &but, Some("x")).unwrap().reason,
            Resolved::TargetingMatch
        );
        // bucketing: flagd rolls out by flagd's hash (SPEC §3.1 vectors: on 25 / off 75).
        let mut flagd = flag;
        flagd["bucketing"] = json!("flagd");
        flagd["allow"] = json!([]);
        assert!(!is_enabled("new_ui", &flagd, "user-42"));
        assert!(is_enabled("new_ui", &flagd, "user-43"));
        assert!(!is_enabled("new_ui", &flagd, "alice"));
        // A variant flag with boolean variants is on when it resolves to true.
        let boolean = json!({"variants": {"on": true, "off": false}, "defaultVariant": "off",
                             "targets": {"on": ["vip"]}, "enabled": true});
        assert!(is_enabled("b", &boolean, "vip") && !is_enabled("b", &boolean, "other"));
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
