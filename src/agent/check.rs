//! The checks a new document passes before it is handed to the application, and the optional
//! `${VAR}` / `${VAR:default}` expansion of environment variables in its string values. Pure
//! functions: no I/O.
//!
//! YAML and JSON documents are parsed and their hash — the SHA-256 of the canonical JSON, as the
//! operator computes it (`document::hash`) — is recomputed and, when the source carries the
//! `hotconf.dev/hash` annotation, compared with it. Properties and env documents cannot be parsed
//! back into typed values, so their hash cannot be recomputed: they get a syntax check, and the
//! annotation (when there is one) is taken as their hash.

use serde_json::Value;

use crate::crd::Format;
use crate::document;

/// Looks an environment variable up (`std::env::var` in the agent; a map in tests).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A document that passed the checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// The parsed document (YAML and JSON only).
    pub document: Option<Value>,
    /// The document's hash: recomputed for YAML and JSON; for properties and env the
    /// annotation's, else the SHA-256 of the text.
    pub hash: String,
    /// Whether `hash` was recomputed from the content and matched the annotation (or there was
    /// no annotation to match).
    pub verified: bool,
}

/// Why a document is refused (a sentence for the log and the Pod annotation).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Checks `text` in `format` against the `hotconf.dev/hash` annotation, when there is one.
/// The error says why the document is refused.
pub fn check(text: &str, format: Format, expected_hash: Option<&str>) -> Result<Checked, Refusal> {
    check_text(text, format, expected_hash).map_err(Refusal)
}

fn check_text(text: &str, format: Format, expected_hash: Option<&str>) -> Result<Checked, String> {
    match format {
        Format::Yaml | Format::Json => {
            if text.trim().is_empty() {
                return Err("the document is empty".into());
            }
            let value = document::parse(text, format)
                .map_err(|e| format!("the document does not parse as {format:?}: {e}"))?;
            if !value.is_object() {
                return Err(format!(
                    "the document is not a mapping but {}",
                    kind_of(&value)
                ));
            }
            let hash = document::hash(&value);
            if let Some(expected) = expected_hash
                && expected != hash
            {
                return Err(format!(
                    "hash mismatch: the annotation says {expected}, the content hashes to {hash}"
                ));
            }
            Ok(Checked {
                document: Some(value),
                hash,
                verified: true,
            })
        }
        Format::Env => {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let name = line.split_once('=').map(|(k, _)| k);
                if !name.is_some_and(is_env_name) {
                    return Err(format!("line {}: not NAME=value: {}", n + 1, shorten(line)));
                }
            }
            Ok(text_checked(text, expected_hash))
        }
        // Any line is a valid properties entry (a key alone means an empty value).
        Format::Properties => Ok(text_checked(text, expected_hash)),
        // A flagd definition is not the document (it cannot hash back to it): a JSON object
        // with a `flags` object, identified by the annotation.
        Format::Flagd => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| format!("the flagd definition does not parse as JSON: {e}"))?;
            if !value.get("flags").is_some_and(Value::is_object) {
                return Err("the flagd definition has no flags object".into());
            }
            Ok(text_checked(text, expected_hash))
        }
    }
}

fn text_checked(text: &str, expected_hash: Option<&str>) -> Checked {
    Checked {
        document: None,
        hash: expected_hash
            .map(str::to_string)
            .unwrap_or_else(|| super::source::sha256_hex(text.as_bytes())),
        verified: expected_hash.is_none(),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

/// The bytes handed to the application: the text as the source holds it, or, with `expand`,
/// the document with environment variables expanded in its string values. Returns the text and
/// the names of variables that were unset and had no default (they expand to nothing).
pub fn output(
    text: &str,
    checked: &Checked,
    format: Format,
    expand: Option<Lookup<'_>>,
) -> (String, Vec<String>) {
    let Some(lookup) = expand else {
        return (text.to_string(), Vec::new());
    };
    let mut missing = Vec::new();
    let out = match (&checked.document, format) {
        (Some(doc), Format::Yaml | Format::Json) => {
            let expanded = expand_value(doc, lookup, &mut missing);
            if expanded == *doc {
                // Nothing to expand: keep the source's bytes.
                text.to_string()
            } else {
                document::render(&expanded, format)
            }
        }
        _ => expand_lines(text, format, lookup, &mut missing),
    };
    missing.sort();
    missing.dedup();
    (out, missing)
}

/// Expands `${VAR}` and `${VAR:default}` in every string value (not in keys). `$${` stands for
/// a literal `${`.
pub fn expand_value(value: &Value, lookup: Lookup<'_>, missing: &mut Vec<String>) -> Value {
    match value {
        Value::String(s) => Value::String(expand_str(s, lookup, missing, &|v| v.to_string())),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| expand_value(v, lookup, missing))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), expand_value(v, lookup, missing)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Expands the references in one string; `escape` is applied to each value taken from the
/// environment.
pub fn expand_str(
    s: &str,
    lookup: Lookup<'_>,
    missing: &mut Vec<String>,
    escape: &dyn Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        // `$${` is an escaped `${`.
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        // The env format writes a literal `$` as `\$`: `\${` is a reference too.
        let prefix = rest[..at].strip_suffix('\\').unwrap_or(&rest[..at]);
        let body_start = at + 2;
        let Some(len) = rest[body_start..].find('}') else {
            break;
        };
        let body = &rest[body_start..body_start + len];
        let (name, default) = match body.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if !is_env_name(name) {
            // Not a reference: keep the text and move past the `${`.
            out.push_str(&rest[..body_start]);
            rest = &rest[body_start..];
            continue;
        }
        out.push_str(prefix);
        match lookup(name) {
            Some(v) => out.push_str(&escape(&v)),
            None => match default {
                // A default is written in the document's own syntax already.
                Some(d) => out.push_str(d),
                None => missing.push(name.to_string()),
            },
        }
        rest = &rest[body_start + len + 1..];
    }
    out.push_str(rest);
    out
}

// Properties and env documents: expand in the value part of each `key=value` line, escaping the
// substituted text for the format.
fn expand_lines(
    text: &str,
    format: Format,
    lookup: Lookup<'_>,
    missing: &mut Vec<String>,
) -> String {
    let escape: &dyn Fn(&str) -> String = match format {
        Format::Env => &|v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
                .replace('\n', "\\n")
        },
        _ => &|v: &str| v.replace('\\', "\\\\").replace('\n', "\\n"),
    };
    text.split_inclusive('\n')
        .map(|line| match line.split_once('=') {
            Some((key, value)) if !line.trim_start().starts_with(['#', '!']) => {
                format!("{key}={}", expand_str(value, lookup, missing, escape))
            }
            _ => line.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(doc: &Value) -> String {
        document::render(doc, Format::Yaml)
    }

    #[test]
    fn yaml_and_json_are_parsed_and_hashed() {
        let doc = json!({"values": {"a": 1, "b": "x"}});
        let h = document::hash(&doc);
        let ok = check(&yaml(&doc), Format::Yaml, Some(&h)).unwrap();
        assert_eq!(ok.document, Some(doc.clone()));
        assert_eq!(ok.hash, h);
        assert!(ok.verified);
        let json = document::render(&doc, Format::Json);
        assert_eq!(check(&json, Format::Json, None).unwrap().hash, h);
    }

    #[test]
    fn bad_documents_are_refused_with_a_reason() {
        let doc = json!({"values": {"a": 1}});
        let err = check(&yaml(&doc), Format::Yaml, Some("0000"))
            .unwrap_err()
            .0;
        assert!(err.starts_with("hash mismatch"), "{err}");
        let err = check("values: [1, 2\n", Format::Yaml, None).unwrap_err().0;
        assert!(err.contains("does not parse"), "{err}");
        assert!(
            check("", Format::Yaml, None)
                .unwrap_err()
                .0
                .contains("empty")
        );
        assert!(
            check("- a\n- b\n", Format::Yaml, None)
                .unwrap_err()
                .0
                .contains("not a mapping")
        );
        assert!(check("{\"a\": ", Format::Json, None).is_err());
    }

    #[test]
    fn env_and_properties_get_a_syntax_check() {
        assert!(check("A=1\n# c\n\nexport B=\"x y\"\n", Format::Env, None).is_ok());
        // A flagd definition: JSON with a flags object, identified by its annotation.
        let flagd = check("{\"flags\": {}}", Format::Flagd, Some("sha256:h")).unwrap();
        assert_eq!((flagd.hash.as_str(), flagd.document), ("sha256:h", None));
        assert!(check("{\"flag\": 1}", Format::Flagd, None).is_err());
        assert!(check("not json", Format::Flagd, None).is_err());
        let err = check("A=1\nnot a line\n", Format::Env, None).unwrap_err().0;
        assert!(err.starts_with("line 2"), "{err}");
        let ok = check("a.b=1\n", Format::Properties, Some("abc")).unwrap();
        assert_eq!(ok.hash, "abc");
        assert!(!ok.verified);
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_of_references_and_defaults() {
        let mut missing = Vec::new();
        let id = |v: &str| v.to_string();
        let e = |s: &str, m: &mut Vec<String>| expand_str(s, &env, m, &id);
        assert_eq!(e("${HOST}:5432", &mut missing), "db.local:5432");
        assert_eq!(e("${PORT:5432}", &mut missing), "5432");
        assert_eq!(e("${HOST:other}", &mut missing), "db.local");
        assert_eq!(e("${EMPTY:x}", &mut missing), "");
        assert_eq!(e("a${NOPE}b", &mut missing), "ab");
        assert_eq!(e("$${HOST}", &mut missing), "${HOST}");
        assert_eq!(e("${not valid}", &mut missing), "${not valid}");
        assert_eq!(e("${HOST", &mut missing), "${HOST");
        assert_eq!(e("${URL:http://x:1/}", &mut missing), "http://x:1/");
        assert_eq!(missing, vec!["NOPE"]);
    }

    #[test]
    fn expansion_in_documents_only_touches_string_values() {
        let doc = json!({"values": {"${HOST}": "${HOST}", "n": 3, "l": ["${PORT:1}"]}});
        let text = yaml(&doc);
        let checked = check(&text, Format::Yaml, None).unwrap();
        let (out, missing) = output(&text, &checked, Format::Yaml, Some(&env));
        assert!(missing.is_empty());
        assert_eq!(
            document::parse(&out, Format::Yaml).unwrap(),
            json!({"values": {"${HOST}": "db.local", "n": 3, "l": ["1"]}})
        );
        let plain = json!({"values": {"a": "b"}});
        let text = yaml(&plain);
        let checked = check(&text, Format::Yaml, None).unwrap();
        assert_eq!(output(&text, &checked, Format::Yaml, Some(&env)).0, text);
        assert_eq!(output(&text, &checked, Format::Yaml, None).0, text);
    }

    #[test]
    fn expansion_in_env_and_properties_text() {
        let doc = json!({"values": {"host": "${HOST}", "name": "${NAME:a \"b\"}"}});
        let text = document::render(&doc, Format::Env);
        let checked = check(&text, Format::Env, None).unwrap();
        let (out, _) = output(&text, &checked, Format::Env, Some(&env));
        assert_eq!(
            out,
            "VALUES_HOST=\"db.local\"\nVALUES_NAME=\"a \\\"b\\\"\"\n"
        );
        let text = "a.host=${HOST}\n# ${HOST}\n";
        let checked = check(text, Format::Properties, None).unwrap();
        let (out, _) = output(text, &checked, Format::Properties, Some(&env));
        assert_eq!(out, "a.host=db.local\n# ${HOST}\n");
    }
}
