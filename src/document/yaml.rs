//! YAML that every reader reads alike: YAML 1.2 readers (serde_yaml, go-yaml v3) and YAML 1.1
//! ones (kubectl's sigs.k8s.io/yaml, PyYAML, SnakeYAML, Ruby's Psych). serde_yaml writes for
//! YAML 1.2 and leaves `on`, `no`, `y`, `2026-06-01T18:00:00Z` or `1:20` unquoted, which a YAML
//! 1.1 reader takes for a boolean, a timestamp or a number. Here a string is written plain only
//! when it cannot be read as anything else, as a literal block when it has several lines, and
//! double-quoted (JSON's escapes, which both versions read) otherwise. Object keys are sorted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// `value` as a YAML document (block style, sorted keys, a final newline).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => object(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => array(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar, 0));
            out.push('\n');
        }
    }
    out
}

// The words YAML 1.1 reads as booleans or null, plain.
const WORDS: [&str; 25] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
];

/// Whether `s` reads back as the same string, unquoted, in YAML 1.1 and 1.2 alike.
fn plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && !WORDS.contains(&s)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@+= ".contains(c))
        && !s.contains(": ")
        && !s.ends_with([':', ' '])
}

// A scalar (or an empty collection) as it follows `key: ` or `- ` at `indent`.
fn inline(value: &Value, indent: usize) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain(s) => s.clone(),
        Value::String(s)
            if s.contains('\n')
                && !s.trim_end_matches('\n').is_empty()
                && !s.chars().any(|c| c.is_control() && c != '\n') =>
        {
            literal(s, indent)
        }
        Value::String(s) => serde_json::to_string(s).expect("a string serializes"),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

// A literal block (`|`), its lines at `indent` + 2; the header keeps the final newlines exactly
// and says how far the lines are indented when the first begins with a space.
fn literal(s: &str, indent: usize) -> String {
    let body = s.trim_end_matches('\n');
    let chomp = match s.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let pad = " ".repeat(indent + 2);
    let indicator = if body.starts_with(' ') { "2" } else { "" };
    let mut out = format!("|{indicator}{chomp}");
    for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    out
}

fn key(k: &str) -> String {
    if plain(k) {
        k.to_string()
    } else {
        serde_json::to_string(k).expect("a string serializes")
    }
}

fn object(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    let sorted: BTreeMap<&String, &Value> = map.iter().collect();
    let pad = " ".repeat(indent);
    for (k, v) in sorted {
        let _ = write!(out, "{pad}{}:", key(k));
        nested(out, v, indent, indent + 2);
    }
}

fn array(out: &mut String, items: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    for v in items {
        let _ = write!(out, "{pad}-");
        match v {
            // `- key: v` with the other keys under the first.
            Value::Object(map) if !map.is_empty() => {
                let mut inner = String::new();
                object(&mut inner, map, indent + 2);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            Value::Array(items) if !items.is_empty() => {
                let mut inner = String::new();
                array(&mut inner, items, indent + 2);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            scalar => {
                let _ = writeln!(out, " {}", inline(scalar, indent));
            }
        }
    }
}

// What follows `key:` at `indent`: a scalar on the same line, or the collection below it
// (a list at the key's own indentation, as kubectl writes it; a map two deeper).
fn nested(out: &mut String, value: &Value, indent: usize, deeper: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            object(out, map, deeper);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            array(out, items, indent);
        }
        scalar => {
            let _ = writeln!(out, " {}", inline(scalar, indent));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_a_yaml_1_1_reader_would_take_for_something_else_are_quoted() {
        let doc = json!({
            "mode": "on", "flag": "no", "y": "y", "until": "2026-06-01T18:00:00Z",
            "ratio": "1:20", "octal": "0440", "num": "12_000", "word": "AGGRESSIVE",
            "url": "https://example.com/a", "spaced": "two words", "colon": "a: b",
            "empty": "", "n": 1.5, "b": true, "z": null, "list": [], "map": {},
        });
        assert_eq!(
            to_string(&doc),
            "b: true\ncolon: \"a: b\"\nempty: \"\"\nflag: \"no\"\nlist: []\nmap: {}\nmode: \"on\"\n\
             \"n\": 1.5\nnum: \"12_000\"\noctal: \"0440\"\nratio: \"1:20\"\nspaced: two words\n\
             until: \"2026-06-01T18:00:00Z\"\nurl: https://example.com/a\nword: AGGRESSIVE\n\
             \"y\": \"y\"\nz: null\n"
        );
    }

    #[test]
    fn nesting_and_lines_read_back_as_they_were() {
        let doc = json!({
            "a": {"b": [1, {"c": "x", "d": ["e", "f"]}, [2, 3]], "g": {"h": "i"}},
            "text": "line one\n  indented\n\nlast\n",
            "lead": " starts with a space\nand more",
            "tab": "a\tb\nc",
            "top": [{"k": {"x": 1}, "l": 2}],
        });
        let text = to_string(&doc);
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, doc, "{text}");
        assert!(
            text.contains("text: |\n  line one\n    indented\n\n  last\n"),
            "{text}"
        );
        for scalar in [json!("yes"), json!(7), json!("multi\nline")] {
            let back: Value = serde_yaml::from_str(&to_string(&scalar)).unwrap();
            assert_eq!(back, scalar);
        }
    }
}
