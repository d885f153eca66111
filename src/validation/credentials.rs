//! Credential detection (SPEC.md §5.1): keys and literal values that look like secrets, which
//! belong in a Secret referenced through `valuesFrom[].secretKeyRef`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

pub(super) const MOVE_TO_SECRET: &str =
    "put it in a Secret and reference it with valuesFrom.secretKeyRef instead of a literal";

/// Key looks like a credential: contains (case-insensitive; `-` and `.` count as `_`, and a
/// camelCase boundary does too, so `apiKey` and `dbPassword` match) password, passwd, secret,
/// token, api_key, apikey, private_key or credential.
pub fn is_credential_key(key: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
    ];
    let mut flat = String::with_capacity(key.len());
    let mut snake = String::with_capacity(key.len() + 4);
    let mut after_lower = false;
    for c in key.chars() {
        let c = if c == '-' || c == '.' { '_' } else { c };
        if c.is_uppercase() && after_lower {
            snake.push('_');
        }
        after_lower = c.is_lowercase() || c.is_ascii_digit();
        flat.extend(c.to_lowercase());
        snake.extend(c.to_lowercase());
    }
    MARKERS
        .iter()
        .any(|marker| flat.contains(marker) || snake.contains(marker))
}

pub(super) static PEM_PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
        .expect("the PEM pattern compiles")
});
pub(super) static AWS_ACCESS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?:$|[^A-Za-z0-9])")
        .expect("the AWS key pattern compiles")
});
pub(super) static JWT: LazyLock<Regex> = LazyLock::new(|| {
    // Base64url segments, delimited so that a longer word containing one does not count.
    let seg = "[A-Za-z0-9_-]";
    Regex::new(&format!(
        r"(?:^|[^A-Za-z0-9_-])eyJ{seg}*\.{seg}+\.{seg}+(?:$|[^A-Za-z0-9_-])"
    ))
    .expect("the JWT pattern compiles")
});

/// Value looks like a credential: a PEM private key block, an AWS access key id (`AKIA`/`ASIA`
/// and 16 of `[A-Z0-9]`) or a JWT (three base64url segments, the first starting with `eyJ`),
/// anywhere in the text. Returns what it looks like.
pub fn credential_kind(value: &str) -> Option<&'static str> {
    if PEM_PRIVATE_KEY.is_match(value) {
        Some("a PEM private key")
    } else if AWS_ACCESS_KEY_ID.is_match(value) {
        Some("an AWS access key id")
    } else if JWT.is_match(value) {
        Some("a JSON Web Token")
    } else {
        None
    }
}

/// The first string inside `value` that looks like a credential: its location below `top`
/// (`top`, `top.a[2]`) and what it looks like.
pub(super) fn find_credential_string(top: &str, value: &Value) -> Option<(String, &'static str)> {
    match value {
        Value::String(s) => credential_kind(s).map(|kind| (top.to_owned(), kind)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_credential_string(&format!("{top}[{i}]"), item)),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| find_credential_string(&format!("{top}.{k}"), v)),
        _ => None,
    }
}

/// The first nested object key (below the top) that looks like a credential and holds a
/// non-empty string.
pub(super) fn find_credential_key(top: &str, value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_credential_key(&format!("{top}[{i}]"), item)),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{top}.{k}");
            if is_credential_key(k) && is_filled_string(v) {
                Some(here)
            } else {
                find_credential_key(&here, v)
            }
        }),
        _ => None,
    }
}

pub(super) fn is_filled_string(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.trim().is_empty())
}

pub(super) fn credential_value_rule(top: &str, location: &str, kind: &'static str) -> String {
    if location == top {
        format!("value looks like {kind}: {MOVE_TO_SECRET}")
    } else {
        format!("value at {location} looks like {kind}: {MOVE_TO_SECRET}")
    }
}

/// The credential rule a literal breaks, if any: its key (or a nested key) looks like a
/// credential and holds a non-empty string, or a string in it looks like one.
/// `exempt_top_key`: the schema declares the key with a scalar type other than string.
pub(super) fn credential_leak(key: &str, value: &Value, exempt_top_key: bool) -> Option<String> {
    if !exempt_top_key && is_credential_key(key) && is_filled_string(value) {
        return Some(format!("key looks like a credential: {MOVE_TO_SECRET}"));
    }
    if let Some(location) = find_credential_key(key, value) {
        return Some(format!(
            "key {location} looks like a credential: {MOVE_TO_SECRET}"
        ));
    }
    find_credential_string(key, value)
        .map(|(location, kind)| credential_value_rule(key, &location, kind))
}
