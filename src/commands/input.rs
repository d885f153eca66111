//! Reading manifests for the offline commands: files, directories and stdin (`-`), split into
//! YAML documents, and sorted into hotconf objects, Secrets (which resolve `valuesFrom`) and the
//! rest. Problems are collected per document, never fatal, so one run reports everything.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use base64::Engine as _;
use serde_json::Value;

use crate::crd::{GROUP, PoolBudget, RuntimeConfig, VERSION};
use crate::kinds::ConfigResource;
use crate::manifest;
use crate::validation::FieldError;

/// How stdin is named in messages.
pub const STDIN: &str = "<stdin>";

/// The manifests to read: what `validate`, `render` and `import` share.
#[derive(clap::Args, Debug, Clone)]
pub struct Files {
    /// Manifest files or directories (`.yaml`, `.yml`, `.json`), or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        required = true,
        num_args = 1..,
        value_name = "PATH",
        env = "HOTCONF_FILENAME"
    )]
    pub paths: Vec<PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long, env = "HOTCONF_RECURSIVE")]
    pub recursive: bool,
}

/// The arguments the offline commands share.
#[derive(clap::Args, Debug, Clone)]
pub struct InputArgs {
    /// The manifests.
    #[command(flatten)]
    pub files: Files,
    /// The namespace of objects whose manifest sets none.
    #[arg(
        short = 'n',
        long,
        env = "HOTCONF_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
}

/// One problem with a document, as the operator's validation reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The field path (`spec.pools.database.maxConnections`), empty for the whole document.
    pub path: String,
    /// The offending value as compact JSON text, when it may be shown.
    pub value: Option<String>,
    /// The rule that is broken.
    pub rule: String,
}

impl From<FieldError> for Problem {
    fn from(e: FieldError) -> Self {
        Problem {
            path: e.path,
            value: e.value,
            rule: e.rule,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.rule)?;
        if let Some(value) = &self.value {
            write!(f, " (got {value})")?;
        }
        Ok(())
    }
}

/// What a document turned out to be.
#[derive(Clone, Debug)]
pub enum Content {
    /// A RuntimeConfig that deserialized into the Rust type.
    RuntimeConfig(Box<RuntimeConfig>),
    /// A PoolBudget that deserialized into the Rust type.
    PoolBudget(Box<PoolBudget>),
    /// A hotconf object that cannot be judged further (see the document's problems).
    Broken,
    /// A file that cannot be read, or a document that is not YAML.
    Unreadable,
    /// Anything else: skipped, with a note.
    Other,
}

/// One YAML document of the input.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The file as given, or [`STDIN`].
    pub file: String,
    /// The document's index in its file, from 0 (empty documents count too); `None` for a
    /// problem with the whole file.
    pub index: Option<usize>,
    /// The 1-based line where the document's content starts (its `---` line when it has none).
    pub line: Option<usize>,
    /// `kind`, when the document has one.
    pub kind: Option<String>,
    /// The namespace (the manifest's, else `--namespace`).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: Option<String>,
    /// What it is.
    pub content: Content,
    /// Errors found before (or instead of) the operator's validation.
    pub problems: Vec<Problem>,
    /// Things worth saying that are not errors.
    pub notes: Vec<String>,
}

impl Doc {
    fn new(file: &str, index: usize, line: usize) -> Self {
        Doc {
            file: file.to_string(),
            index: Some(index),
            line: Some(line),
            kind: None,
            namespace: None,
            name: None,
            content: Content::Other,
            problems: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// `file:line`, the line where the document starts (`file` for the whole file), as editors
    /// and compilers name a place.
    pub fn location(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}", self.file),
            None => self.file.clone(),
        }
    }

    /// `Kind/namespace/name` (or as much of it as is known).
    pub fn object(&self) -> String {
        let kind = self.kind.as_deref().unwrap_or("<no kind>");
        let name = self.name.as_deref().unwrap_or("<no name>");
        match &self.namespace {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        }
    }

    /// Whether this is a hotconf object (judged, or broken).
    pub fn is_hotconf(&self) -> bool {
        !matches!(self.content, Content::Other | Content::Unreadable)
    }

    /// Whether the document could not be read or parsed at all.
    pub fn is_unreadable(&self) -> bool {
        matches!(self.content, Content::Unreadable)
    }
}

/// The Secret manifests among the inputs: (namespace, name) → key → value.
pub type SecretManifests = BTreeMap<(String, String), BTreeMap<String, String>>;

/// Everything read from the inputs.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Every non-empty document, and one entry per unreadable file or YAML error.
    pub docs: Vec<Doc>,
    /// The Secrets found, for resolving `valuesFrom`.
    pub secrets: SecretManifests,
}

/// Reads and sorts every document of the inputs.
pub fn read(args: &InputArgs) -> Inputs {
    let mut inputs = Inputs::default();
    for path in &args.files.paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => parse_text(STDIN, &text, &args.namespace, &mut inputs),
                Err(e) => inputs.docs.push(unreadable(STDIN, &e.to_string())),
            }
            continue;
        }
        let files = match expand(path, args.files.recursive) {
            Ok(files) => files,
            Err(e) => {
                inputs
                    .docs
                    .push(unreadable(&path.display().to_string(), &e.to_string()));
                continue;
            }
        };
        for file in files {
            let shown = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => parse_text(&shown, &text, &args.namespace, &mut inputs),
                Err(e) => inputs.docs.push(unreadable(&shown, &e.to_string())),
            }
        }
    }
    inputs
}

/// Reads the documents of one manifest text, named `file` in messages (for tests and tools that
/// have the text at hand).
pub fn read_text(file: &str, text: &str, namespace: &str) -> Inputs {
    let mut inputs = Inputs::default();
    parse_text(file, text, namespace, &mut inputs);
    inputs
}

fn unreadable(file: &str, error: &str) -> Doc {
    let mut doc = Doc::new(file, 0, 1);
    doc.index = None;
    doc.line = None;
    doc.content = Content::Unreadable;
    doc.problems.push(Problem {
        path: String::new(),
        value: None,
        rule: format!("cannot read the file: {error}"),
    });
    doc
}

/// The manifest files of a path: the path itself, or the `.yaml`/`.yml`/`.json` files of a
/// directory (sorted; subdirectories too when `recursive`).
fn expand(path: &Path, recursive: bool) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                files.extend(expand(&entry, true)?);
            }
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(entry);
        }
    }
    Ok(files)
}

/// The 1-based line where each YAML document of `text` starts, in the parser's order: the first
/// line of its content, or its `---` line when it has none. A leading stretch of comments
/// before the first `---` is no document, as the parser sees it.
fn document_lines(text: &str) -> Vec<usize> {
    let content = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "..." && !t.starts_with('%')
    };
    let mut starts = Vec::new();
    // The open document: its `---` line (None for an implicit one) and its first content line;
    // an implicit one with no content is no document.
    let mut open: (Option<usize>, Option<usize>) = (None, None);
    for (i, l) in text.lines().enumerate() {
        let n = i + 1;
        let rest = l.strip_prefix("---");
        if rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
            starts.extend(open.1.or(open.0));
            let inline = rest.is_some_and(content);
            open = (Some(n), inline.then_some(n));
        } else if open.1.is_none() && content(l) {
            open.1 = Some(n);
        }
    }
    starts.extend(open.1.or(open.0));
    starts
}

fn parse_text(file: &str, text: &str, default_ns: &str, inputs: &mut Inputs) {
    let lines = document_lines(text);
    let line_of = |index: usize| lines.get(index).copied().unwrap_or(index + 1);
    let (docs, error) = manifest::documents(text);
    let count = docs.len();
    for (index, parsed) in docs.into_iter().enumerate() {
        if parsed.value.is_null() {
            continue;
        }
        let mut doc = classify(
            file,
            (index, line_of(index)),
            parsed.value,
            default_ns,
            &mut inputs.secrets,
        );
        doc.notes
            .extend(parsed.duplicate_keys.iter().map(|d| {
                format!(
                    "line {}: key {:?} is given twice in one mapping; the last value counts, as kubectl reads it",
                    d.line, d.key
                )
            }));
        inputs.docs.push(doc);
    }
    if let Some(e) = error {
        let mut doc = Doc::new(file, count, line_of(count));
        doc.content = Content::Unreadable;
        doc.problems.push(Problem {
            path: String::new(),
            value: None,
            rule: format!("cannot parse YAML: {e}"),
        });
        inputs.docs.push(doc);
    }
}

fn classify(
    file: &str,
    (index, line): (usize, usize),
    mut value: Value,
    default_ns: &str,
    secrets: &mut SecretManifests,
) -> Doc {
    let mut doc = Doc::new(file, index, line);
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let api_version = text(&value, "/apiVersion");
    doc.kind = text(&value, "/kind");
    doc.name = text(&value, "/metadata/name");
    let (Some(api_version), Some(kind)) = (api_version, doc.kind.clone()) else {
        doc.notes
            .push("not a Kubernetes object (it has no apiVersion and kind): skipped".to_string());
        return doc;
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let namespace = text(&value, "/metadata/namespace").unwrap_or_else(|| default_ns.to_string());
    doc.namespace = Some(namespace.clone());

    if group != GROUP {
        if group.is_empty() && version == "v1" && kind == "Secret" {
            let keys = secret_values(&value);
            let name = doc.name.clone().unwrap_or_default();
            doc.notes.push(format!(
                "not a hotconf kind: skipped (its keys resolve valuesFrom references to Secret {name:?})"
            ));
            secrets.insert((namespace, name), keys);
        } else {
            doc.notes.push("not a hotconf kind: skipped".to_string());
        }
        return doc;
    }

    doc.content = Content::Broken;
    if version != VERSION {
        doc.problems.push(Problem {
            path: "apiVersion".into(),
            value: Some(format!("{api_version:?}")),
            rule: format!("is not served: use {GROUP}/{VERSION}"),
        });
        return doc;
    }
    if !matches!(kind.as_str(), "RuntimeConfig" | "PoolBudget") {
        doc.problems.push(Problem {
            path: "kind".into(),
            value: Some(format!("{kind:?}")),
            rule: format!("{GROUP} has the kinds RuntimeConfig and PoolBudget"),
        });
        return doc;
    }
    if doc.name.as_deref().is_none_or(str::is_empty) {
        doc.problems.push(Problem {
            path: "metadata.name".into(),
            value: None,
            rule: "is required".into(),
        });
    }
    doc.problems.extend(unknown_fields(&kind, &value));
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace));
    }
    doc.content = match kind.as_str() {
        "RuntimeConfig" => typed::<RuntimeConfig>(&value, &mut doc.problems)
            .map_or(Content::Broken, |o| Content::RuntimeConfig(Box::new(o))),
        _ => typed::<PoolBudget>(&value, &mut doc.problems)
            .map_or(Content::Broken, |o| Content::PoolBudget(Box::new(o))),
    };
    doc
}

/// Deserializes a hotconf object. When it does not deserialize, every field that breaks the
/// CRD's schema is a problem at its path, as the API server reports them all at once (the
/// operator's own rules need the typed object, so they come once these are fixed).
fn typed<K: ConfigResource>(value: &Value, problems: &mut Vec<Problem>) -> Option<K> {
    let e = match serde_path_to_error::deserialize::<_, K>(value) {
        Ok(obj) => return Some(obj),
        Err(e) => e,
    };
    let found = spec_schema(K::KIND)
        .zip(value.get("spec"))
        .map(|(schema, spec)| {
            let mut found = Vec::new();
            violations(spec, schema, "spec", &mut found);
            found
        })
        .unwrap_or_default();
    let path = e.path().to_string();
    if !found.iter().any(|p| p.path == path) {
        problems.push(Problem {
            path: if path == "." { String::new() } else { path },
            value: None,
            rule: e.into_inner().to_string(),
        });
    }
    problems.extend(found);
    None
}

/// The CRD's schema of `spec` for `kind`.
fn spec_schema(kind: &str) -> Option<&'static Value> {
    static SPEC_SCHEMAS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
        crate::crd::crds()
            .into_iter()
            .filter_map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let schema = crd
                    .spec
                    .versions
                    .into_iter()
                    .next()?
                    .schema?
                    .open_api_v3_schema?;
                let spec = serde_json::to_value(schema)
                    .ok()?
                    .pointer("/properties/spec")?
                    .clone();
                Some((kind, spec))
            })
            .collect()
    });
    SPEC_SCHEMAS.get(kind)
}

// What the API server's schema validation says of `value` at `path`: types, enums, bounds,
// lengths, patterns, item counts and required fields (unknown fields are `walk`'s).
fn violations(value: &Value, schema: &Value, path: &str, problems: &mut Vec<Problem>) {
    let rule = |problems: &mut Vec<Problem>, rule: String| {
        let mut shown = value.to_string();
        if shown.chars().count() > 80 {
            shown = shown.chars().take(80).chain("…".chars()).collect();
        }
        problems.push(Problem {
            path: path.to_string(),
            value: Some(shown),
            rule,
        });
    };
    let has = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
    // The API server drops a null where the schema does not allow one.
    if value.is_null()
        || has("x-kubernetes-preserve-unknown-fields") && schema.get("type").is_none()
    {
        return;
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    let ty = schema.get("type").and_then(Value::as_str);
    let fits = match ty {
        _ if has("x-kubernetes-int-or-string") => {
            value.is_i64() || value.is_u64() || value.is_string()
        }
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        _ => true,
    };
    if !fits {
        let ty = ty.unwrap_or("integer or string");
        return rule(problems, format!("must be of type {ty}"));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        rule(problems, format!("must be one of {}", allowed.join(", ")));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = number("minimum") {
            if has("exclusiveMinimum") && n <= min {
                rule(problems, format!("must be greater than {min}"));
            } else if n < min {
                rule(problems, format!("must be greater than or equal to {min}"));
            }
        }
        if let Some(max) = number("maximum")
            && n > max
        {
            rule(problems, format!("must be less than or equal to {max}"));
        }
    }
    match value {
        Value::String(text) => {
            let chars = text.chars().count() as u64;
            if let Some(min) = count("minLength")
                && chars < min
            {
                rule(problems, format!("must be at least {min} characters long"));
            }
            if let Some(max) = count("maxLength")
                && chars > max
            {
                rule(problems, format!("may be at most {max} characters long"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                rule(problems, format!("must match {pattern:?}"));
            }
        }
        Value::Array(items) => {
            if let Some(min) = count("minItems")
                && (items.len() as u64) < min
            {
                rule(problems, format!("must have at least {min} items"));
            }
            if let Some(max) = count("maxItems")
                && items.len() as u64 > max
            {
                rule(problems, format!("must have at most {max} items"));
            }
            if let Some(item) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    violations(child, item, &format!("{path}[{i}]"), problems);
                }
            }
        }
        Value::Object(map) => {
            if let Some(max) = count("maxProperties")
                && map.len() as u64 > max
            {
                rule(problems, format!("must have at most {max} properties"));
            }
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if map.get(key).is_none_or(Value::is_null) {
                    problems.push(Problem {
                        path: format!("{path}.{key}"),
                        value: None,
                        rule: "is required".into(),
                    });
                }
            }
            for (key, child) in map {
                if let Some(child_schema) = child_schema(schema, key) {
                    violations(child, child_schema, &format!("{path}.{key}"), problems);
                }
            }
        }
        _ => {}
    }
}

// The schema of an object's field `key`: its declared property, else `additionalProperties`.
fn child_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema
        .get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

/// Fields the CRD does not declare. The API server drops them silently (or refuses the object
/// under strict field validation), so a typo such as `revisonHistoryLimit` would otherwise pass.
fn unknown_fields(kind: &str, value: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    // The root's apiVersion, kind and metadata are the API server's; status is not the user's.
    if let (Some(spec), Some(schema)) = (value.get("spec"), spec_schema(kind)) {
        walk(spec, schema, "spec", &mut problems);
    }
    problems
}

fn walk(value: &Value, schema: &Value, path: &str, problems: &mut Vec<Problem>) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                return;
            }
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match child_schema(schema, key) {
                    Some(child_schema) => walk(child, child_schema, &child_path, problems),
                    None => problems.push(Problem {
                        path: child_path,
                        value: None,
                        rule: "unknown field: the CRD does not declare it (the API server \
                               drops it, or refuses the object under strict field validation)"
                            .into(),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

/// A Secret manifest's keys: `data` (base64) and `stringData`, which wins as on the server.
fn secret_values(value: &Value) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    if let Some(data) = value.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let decoded = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            if let Some(text) = decoded {
                keys.insert(k.clone(), text);
            }
        }
    }
    if let Some(data) = value.get("stringData").and_then(Value::as_object) {
        for (k, v) in data {
            if let Some(s) = v.as_str() {
                keys.insert(k.clone(), s.to_string());
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(yaml: &str) -> (Doc, SecretManifests) {
        let mut inputs = Inputs::default();
        parse_text("t.yaml", yaml, "default", &mut inputs);
        assert_eq!(inputs.docs.len(), 1, "{:?}", inputs.docs);
        (inputs.docs.remove(0), inputs.secrets)
    }

    #[test]
    fn unknown_fields_are_found_at_their_path() {
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: a}\nspec:\n  revisonHistoryLimit: 3\n  pools: {database: {maxConections: 9}}\n",
        );
        let paths: Vec<_> = doc.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.pools.database.maxConections",
                "spec.revisonHistoryLimit"
            ]
        );
        assert!(matches!(doc.content, Content::PoolBudget(_)));
    }

    #[test]
    fn an_object_that_breaks_the_schema_reports_every_field_at_once() {
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a}\nspec:\n  schema:\n    a: {type: integr}\n  values: {b: 0}\n  target: {format: toml, configMapName: Bad_Name}\n  revisionHistoryLimit: 0\n  paused: \"no\"\n",
        );
        assert!(matches!(doc.content, Content::Broken));
        let problems: Vec<_> = doc.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "spec.paused: must be of type boolean (got \"no\")",
                "spec.revisionHistoryLimit: must be greater than or equal to 1 (got 0)",
                "spec.schema.a.type: must be one of \"string\", \"integer\", \"number\", \
                 \"boolean\", \"duration\", \"json\" (got \"integr\")",
                "spec.target.configMapName: must match \"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$\" (got \"Bad_Name\")",
                "spec.target.format: must be one of \"yaml\", \"json\", \"properties\", \"env\", \
                 \"flagd\" (got \"toml\")",
            ],
            "{problems:#?}"
        );
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: a}\nspec:\n  pools:\n    cache: {evictionPolicy: FIFO, maxEntries: 0}\n    database: {maxConnections: 1000}\n",
        );
        let paths: Vec<_> = doc.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.pools.cache.evictionPolicy",
                "spec.pools.cache.maxEntries",
                "spec.pools.database.maxConnections"
            ]
        );
    }

    #[test]
    fn free_form_fields_are_not_unknown() {
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a, labels: {x: z}}\nspec:\n  schema: {k: {type: json, default: {deep: [1]}}}\n  values: {k: {any: thing}}\n",
        );
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        // As kubectl reads it, a plain `y` is a boolean, which no label value may be.
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a, labels: {x: y}}\nspec: {}\n",
        );
        let paths: Vec<_> = doc.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["metadata.labels.x"], "{:?}", doc.problems);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let (doc, _) = one(
            "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: a}\nspec: {pools: {database: {maxConnections: ten}}}\n",
        );
        assert!(matches!(doc.content, Content::Broken));
        assert_eq!(doc.problems.len(), 1, "{:?}", doc.problems);
        assert_eq!(doc.problems[0].path, "spec.pools.database.maxConnections");
        assert_eq!(doc.problems[0].rule, "must be of type integer");
    }

    #[test]
    fn secrets_are_collected_with_string_data_winning() {
        let (doc, secrets) = one(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\ndata: {a: aGk=, b: eA==}\nstringData: {b: why}\n",
        );
        assert!(!doc.is_hotconf());
        let keys = &secrets[&("shop".to_string(), "s".to_string())];
        assert_eq!(keys["a"], "hi");
        assert_eq!(keys["b"], "why");
    }

    #[test]
    fn documents_are_named_by_the_line_they_start_on() {
        let text = "# a comment\n---\n\na: 1\n---\n---\n# note\nb: 2\n--- {c: 3}\n";
        assert_eq!(document_lines(text), vec![4, 5, 8, 9]);
        assert_eq!(document_lines("a: 1\n---\nb: 2\n"), vec![1, 3]);
        assert_eq!(document_lines("---\na: 1\n"), vec![2]);
        assert_eq!(document_lines(""), Vec::<usize>::new());
        let mut inputs = Inputs::default();
        parse_text("t.yaml", text, "default", &mut inputs);
        let named: Vec<String> = inputs.docs.iter().map(Doc::location).collect();
        assert_eq!(named, ["t.yaml:4", "t.yaml:8", "t.yaml:9"]);
    }

    #[test]
    fn a_yaml_error_names_the_document() {
        let mut inputs = Inputs::default();
        parse_text(
            "t.yaml",
            "a: 1\n---\nb: [unclosed\n",
            "default",
            &mut inputs,
        );
        let last = inputs.docs.last().unwrap();
        assert_eq!(last.location(), "t.yaml:3");
        assert!(last.problems[0].rule.starts_with("cannot parse YAML"));
        assert_eq!(json!(inputs.docs.len()), json!(2));
    }
}
