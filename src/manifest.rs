//! Manifests read as kubectl reads them. kubectl (and Argo CD, Flux and the API server's own YAML
//! decoding) turns YAML into JSON with sigs.k8s.io/yaml, which resolves plain scalars by go-yaml
//! v2's YAML 1.1 rules: `yes`, `on`, `y` and `off` are booleans, `0440` is octal, `1_000` is a
//! thousand, `08` is a float, map keys become strings (`on:` is `"true"`), `<<` merges, and a
//! repeated key keeps its last value. serde_yaml reads YAML 1.2, so `hotconf validate` would
//! judge another object than the one the cluster gets. Here a manifest reads as it does there,
//! and a number as it then arrives (a whole float as an integer, as Go's JSON does).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The document as JSON (`null` for an empty one).
    pub value: Value,
    /// Keys given twice in one mapping: kubectl keeps the last value without a word.
    pub duplicate_keys: Vec<DuplicateKey>,
}

/// A key that appears again in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The key, as the JSON object holds it.
    pub key: String,
    /// The 1-based line of its second (or later) appearance.
    pub line: usize,
}

/// Why the rest of a file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(String);

/// Every document of `text`, up to the first one that cannot be read; that one's error comes
/// with them (a YAML parser cannot find the next document after a syntax error).
pub fn documents(text: &str) -> (Vec<Document>, Option<ReadError>) {
    let mut builder = Builder::default();
    let loaded = Parser::new_from_str(text).load(&mut builder, true);
    let error = builder
        .error
        .map(ReadError)
        .or_else(|| loaded.err().map(|e| ReadError(e.to_string())));
    (builder.docs, error)
}

/// A plain scalar, resolved as go-yaml v2 resolves one.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
}

const TRUE: [&str; 11] = [
    "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
];
const FALSE: [&str; 11] = [
    "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
];

fn resolve_plain(s: &str) -> Scalar {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        _ if TRUE.contains(&s) => return Scalar::Bool(true),
        _ if FALSE.contains(&s) => return Scalar::Bool(false),
        _ => {}
    }
    match s.as_bytes()[0] {
        b'.' => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or_else(|| Scalar::Str(s.to_string()), Scalar::Float),
        b'0'..=b'9' | b'+' | b'-' => number(s).unwrap_or_else(|| Scalar::Str(s.to_string())),
        _ => Scalar::Str(s.to_string()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`, then a YAML-style float, on `s` without
/// its underscores. A timestamp is none of these and stays a string, as go-yaml v2 leaves it
/// when decoding into an interface.
fn number(s: &str) -> Option<Scalar> {
    let plain = s.replace('_', "");
    let (negative, digits) = match plain.as_bytes().first()? {
        b'-' => (true, &plain[1..]),
        b'+' => (false, &plain[1..]),
        _ => (false, plain.as_str()),
    };
    let (radix, body) = match digits.get(..2) {
        Some("0x" | "0X") => (16, &digits[2..]),
        Some("0o" | "0O") => (8, &digits[2..]),
        Some("0b" | "0B") => (2, &digits[2..]),
        _ if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
        _ => (10, digits),
    };
    let valid = !body.is_empty() && body.chars().all(|c| c.is_digit(radix));
    if valid && let Ok(magnitude) = u64::from_str_radix(body, radix) {
        let signed = if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        };
        match signed {
            Some(i) => return Some(Scalar::Int(i)),
            // ParseUint takes no sign.
            None if !negative && !plain.starts_with('+') => {
                return Some(Scalar::Uint(magnitude));
            }
            None => {}
        }
    }
    yaml_float(&plain)
        .then(|| plain.parse::<f64>().ok())
        .flatten()
        .map(Scalar::Float)
}

/// go-yaml v2's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => !fraction.is_empty() && digits(fraction),
        Some((whole, fraction)) => !whole.is_empty() && digits(whole) && digits(fraction),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// A scalar with an explicit tag: `!!str` always a string, `!!int` and the like must resolve
/// to their kind, and a tag of one's own (`!Ref`) leaves the text a string, as go-yaml v2 does.
fn resolve_tagged(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Scalar, String> {
    let Some(tag) = tag else {
        return Ok(match style {
            TScalarStyle::Plain => resolve_plain(text),
            _ => Scalar::Str(text.to_string()),
        });
    };
    if tag.handle != "tag:yaml.org,2002:" {
        return Ok(Scalar::Str(text.to_string()));
    }
    let resolved = resolve_plain(text);
    let fits = match (tag.suffix.as_str(), &resolved) {
        ("null", Scalar::Null) | ("bool", Scalar::Bool(_)) => true,
        ("int", Scalar::Int(_) | Scalar::Uint(_)) => true,
        ("float", Scalar::Float(_)) => true,
        ("float", Scalar::Int(i)) => return Ok(Scalar::Float(*i as f64)),
        ("null" | "bool" | "int" | "float", _) => false,
        _ => return Ok(Scalar::Str(text.to_string())),
    };
    if fits {
        Ok(resolved)
    } else {
        Err(format!("cannot decode `{text}` as a !!{}", tag.suffix))
    }
}

/// A scalar as the JSON kubectl sends: a whole float within `i64` becomes an integer and an
/// unsigned one beyond it a float (kubectl decodes its own JSON into unstructured objects).
fn to_json(scalar: Scalar) -> Result<Value, String> {
    Ok(match scalar {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(b),
        Scalar::Int(i) => Value::from(i),
        Scalar::Uint(u) => float(u as f64)?,
        Scalar::Float(f) => float(f)?,
        Scalar::Str(s) => Value::String(s),
    })
}

fn float(f: f64) -> Result<Value, String> {
    if f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0
    /* 2^63 */
    {
        return Ok(Value::from(f as i64));
    }
    Number::from_f64(f).map(Value::Number).ok_or_else(|| {
        let name = if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        };
        format!("json: unsupported value: {name}")
    })
}

/// A map key as sigs.k8s.io/yaml writes it into JSON.
fn key_string(scalar: Scalar) -> Result<String, String> {
    Ok(match scalar {
        Scalar::Str(s) => s,
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Uint(u) => u.to_string(),
        Scalar::Float(f) => float_key(f),
        Scalar::Null => return Err("unsupported map key of type: <nil>".to_string()),
    })
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 32)` with YAML's names for the infinities and NaN, as
/// sigs.k8s.io/yaml turns a float key into a string.
fn float_key(f: f64) -> String {
    if f.is_nan() {
        return ".nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+.inf" } else { "-.inf" }.to_string();
    }
    let f = f as f32;
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        f.to_string()
    }
}

enum Key {
    Name(String),
    Merge,
}

enum Node {
    Sequence {
        items: Vec<Value>,
        anchor: usize,
    },
    Mapping {
        map: Map<String, Value>,
        given: HashSet<String>,
        key: Option<(Key, usize)>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<Document>,
    stack: Vec<Node>,
    root: Option<Value>,
    duplicates: Vec<DuplicateKey>,
    anchors: HashMap<usize, Value>,
    error: Option<String>,
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.event(event, mark.line()) {
            self.error = Some(format!("line {}: {e}", mark.line()));
        }
    }
}

impl Builder {
    fn event(&mut self, event: Event, line: usize) -> Result<(), String> {
        match event {
            Event::DocumentStart => {
                self.root = None;
                self.duplicates.clear();
                self.anchors.clear();
            }
            Event::DocumentEnd => self.docs.push(Document {
                value: self.root.take().unwrap_or(Value::Null),
                duplicate_keys: std::mem::take(&mut self.duplicates),
            }),
            Event::Scalar(text, style, anchor, tag) => {
                let awaiting_key =
                    matches!(self.stack.last(), Some(Node::Mapping { key: None, .. }));
                if awaiting_key && text == "<<" && style == TScalarStyle::Plain && tag.is_none() {
                    self.set_key(Key::Merge, line);
                    return Ok(());
                }
                let scalar = resolve_tagged(&text, style, tag.as_ref())?;
                if awaiting_key {
                    let name = key_string(scalar)?;
                    if anchor != 0 {
                        self.anchors.insert(anchor, Value::String(name.clone()));
                    }
                    self.set_key(Key::Name(name), line);
                } else {
                    self.complete(to_json(scalar)?, anchor, line)?;
                }
            }
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| "unknown anchor".to_string())?;
                self.complete(value, 0, line)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Node::Sequence {
                items: Vec::new(),
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Node::Mapping {
                map: Map::new(),
                given: HashSet::new(),
                key: None,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Node::Sequence { items, anchor }) => (Value::Array(items), anchor),
                    Some(Node::Mapping { map, anchor, .. }) => (Value::Object(map), anchor),
                    None => return Ok(()),
                };
                self.complete(value, anchor, line)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn set_key(&mut self, new: Key, line: usize) {
        if let Some(Node::Mapping { key, .. }) = self.stack.last_mut() {
            *key = Some((new, line));
        }
    }

    /// A finished value goes to its parent: the document, a sequence, or a mapping (as its key
    /// when one is awaited, which only a collection or an alias can be here).
    fn complete(&mut self, value: Value, anchor: usize, line: usize) -> Result<(), String> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Node::Sequence { items, .. }) => items.push(value),
            Some(Node::Mapping { key: None, .. }) => {
                let name = match value {
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => return Err(format!("invalid map key: {other}")),
                };
                self.set_key(Key::Name(name), line);
            }
            Some(Node::Mapping {
                map, given, key, ..
            }) => match key.take() {
                Some((Key::Name(name), at)) => {
                    if !given.insert(name.clone()) {
                        self.duplicates.push(DuplicateKey {
                            key: name.clone(),
                            line: at,
                        });
                    }
                    map.insert(name, value);
                }
                Some((Key::Merge, _)) => merge(map, value)?,
                None => unreachable!("matched above"),
            },
        }
        Ok(())
    }
}

/// `<<: *base` or `<<: [*a, *b]`: the merged keys overwrite what the mapping had so far, and of
/// several maps the first wins (go-yaml v2 merges them last to first).
fn merge(map: &mut Map<String, Value>, value: Value) -> Result<(), String> {
    let refused = || "map merge requires map or sequence of maps as the value".to_string();
    match value {
        Value::Object(from) => map.extend(from),
        Value::Array(items) => {
            for item in items.into_iter().rev() {
                let Value::Object(from) = item else {
                    return Err(refused());
                };
                map.extend(from);
            }
        }
        _ => return Err(refused()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let (docs, error) = documents(text);
        assert_eq!(error, None);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.into_iter().next().unwrap().value
    }

    #[test]
    fn plain_scalars_resolve_as_in_kubectl() {
        // Each expectation is what `kubectl label --local -o json` printed for the same line.
        let cases = [
            ("yes", json!(true)),
            ("on", json!(true)),
            ("Off", json!(false)),
            ("y", json!(true)),
            ("N", json!(false)),
            ("TRUE", json!(true)),
            ("tRue", json!("tRue")),
            ("0440", json!(288)),
            ("1_000", json!(1000)),
            ("2026-12-01", json!("2026-12-01")),
            ("2026-12-01T10:00:00Z", json!("2026-12-01T10:00:00Z")),
            ("1:20", json!("1:20")),
            (".5", json!(0.5)),
            ("0o17", json!(15)),
            ("0b101", json!(5)),
            ("-0b101", json!(-5)),
            ("~", json!(null)),
            ("Null", json!(null)),
            ("", json!(null)),
            ("12e3", json!(12000)),
            ("1.0", json!(1)),
            ("1.", json!(1)),
            ("+12", json!(12)),
            ("0x1F", json!(31)),
            ("99999999999999999999", json!(1e20)),
            ("18446744073709551615", json!(18446744073709551615.0)),
            ("-0", json!(0)),
            ("00", json!(0)),
            ("08", json!(8)),
            ("0.1e+2", json!(10)),
            ("-.5", json!(-0.5)),
            ("'yes'", json!("yes")),
            ("!!str 12", json!("12")),
            ("''", json!("")),
            ("30s", json!("30s")),
            ("1.5.3", json!("1.5.3")),
            ("-x", json!("-x")),
            ("0x", json!("0x")),
            ("1e", json!("1e")),
        ];
        for (text, expected) in cases {
            assert_eq!(one(&format!("v: {text}\n"))["v"], expected, "{text}");
        }
    }

    #[test]
    fn keys_become_strings_as_in_kubectl() {
        let value = one(
            "y: 1\nn: 2\non: 3\n1: four\n1.5: five\n1e6: six\n0x10: seven\n1.5e3: x\n12345678.5: why\n1e-5: z\n",
        );
        assert_eq!(
            value,
            json!({"true": 3, "false": 2, "1": "four", "1.5": "five", "1e+06": "six", "16": "seven",
                   "1500": "x", "1.2345678e+07": "why", "1e-05": "z"})
        );
        let (docs, error) = documents("~: v\n");
        assert!(docs.is_empty());
        assert!(error.unwrap().to_string().contains("unsupported map key"));
        let (_, error) = documents("? [a]\n: v\n");
        assert!(error.unwrap().to_string().contains("invalid map key"));
    }

    #[test]
    fn anchors_merges_and_blocks() {
        let value = one(
            "base: &b {x: 1, y2: 2}\nmerged:\n  <<: *b\n  x: 3\nalias: *b\nmulti: [a, *b]\n\
             both:\n  <<: [{k: first}, {k: second, j: 1}]\nfolded: >\n  a\n  b\nlit: |\n  a\n",
        );
        assert_eq!(value["merged"], json!({"x": 3, "y2": 2}));
        assert_eq!(value["alias"], json!({"x": 1, "y2": 2}));
        assert_eq!(value["multi"], json!(["a", {"x": 1, "y2": 2}]));
        assert_eq!(value["both"], json!({"k": "first", "j": 1}));
        assert_eq!(value["folded"], json!("a b\n"));
        assert_eq!(value["lit"], json!("a\n"));
        let (_, error) = documents("a:\n  <<: 3\n");
        assert!(error.unwrap().to_string().contains("map merge requires"));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_and_is_reported() {
        let (docs, error) = documents("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n");
        assert_eq!(error, None);
        assert_eq!(docs[0].value, json!({"a": 3, "b": {"c": 2}}));
        let keys: Vec<_> = docs[0]
            .duplicate_keys
            .iter()
            .map(|d| (d.key.as_str(), d.line))
            .collect();
        assert_eq!(keys, [("c", 4), ("a", 5)]);
    }

    #[test]
    fn documents_stop_at_the_first_that_cannot_be_read() {
        let (docs, error) = documents("a: 1\n---\n---\nb: .inf\n---\nc: 3\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, json!({"a": 1}));
        assert_eq!(docs[1].value, Value::Null);
        let error = error.unwrap().to_string();
        assert!(error.contains("unsupported value: +Inf"), "{error}");
        let (docs, error) = documents("a: 1\n---\nb: [unclosed\n");
        assert_eq!(docs.len(), 1);
        assert!(error.is_some());
        assert_eq!(documents("# only a comment\n").0.len(), 0);
    }

    #[test]
    fn tags() {
        assert_eq!(one("v: !!int '12'\n")["v"], json!(12));
        assert_eq!(one("v: !!float 1\n")["v"], json!(1));
        assert_eq!(one("v: !Ref 12\n")["v"], json!("12"));
        let (_, error) = documents("v: !!int abc\n");
        assert!(error.unwrap().to_string().contains("as a !!int"));
    }
}
