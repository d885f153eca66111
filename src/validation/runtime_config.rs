//! RuntimeConfig rules: the declared schema and its parameters, literal values against it,
//! `valuesFrom`, feature flags, maintenance and the size bounds of `crd::limits`.

use super::*;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Number, Value};

use crate::crd::{
    FeatureFlag, Maintenance, ParamType, Parameter, RestartTarget, RuntimeConfigSpec, limits,
};

/// All errors of a RuntimeConfig spec.
///
/// `secrets` is `None` offline (the CLI without a cluster): `valuesFrom` references are then
/// neither resolved nor reported as missing. With `Some`, a reference whose entry is absent or
/// `Err` is an error naming the Secret and key, and a resolved value is checked against the
/// schema without ever appearing in the error.
pub fn validate_runtime_config(
    spec: &RuntimeConfigSpec,
    secrets: Option<&SecretValues>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_sizes(spec, &mut errors);
    for (key, param) in &spec.schema {
        check_parameter(key, param, &mut errors);
    }
    for (key, value) in &spec.values {
        check_literal(spec, key, value, &mut errors);
    }
    check_values_from(spec, secrets, &mut errors);
    for (name, flag) in &spec.feature_flags {
        check_flag(name, flag, &mut errors);
    }
    if let Some(maintenance) = &spec.maintenance {
        check_maintenance(maintenance, &mut errors);
    }
    check_restart_targets(&spec.restart_targets, &mut errors);
    if let Some(target) = &spec.target {
        if target.format == Some(crate::crd::Format::Flagd) {
            check_flagd_format(spec, "target.format flagd", &mut errors);
        } else if target.flagd_file_name.is_some() {
            check_flagd_format(spec, "target.flagdFileName", &mut errors);
        }
    }
    errors.extend(validate_common(
        spec.target.as_ref(),
        spec.revision_history_limit,
    ));
    errors
}

// `target.format: flagd` and `target.flagdFileName` write the flags for flagd, which buckets
// only as flagd does: a split or a partial rollout bucketed by FNV-1a cannot be written for it.
// `why` names the setting.
fn check_flagd_format(spec: &RuntimeConfigSpec, why: &str, errors: &mut Vec<FieldError>) {
    use crate::crd::Bucketing;
    for (name, flag) in &spec.feature_flags {
        let splits = if flag.variants.is_empty() {
            flag.rollout_percentage.is_some_and(|p| p > 0 && p < 100)
                && flag.bucketing != Some(Bucketing::Flagd)
        } else {
            !flag.fractional.is_empty() && flag.bucketing == Some(Bucketing::Fnv1a)
        };
        if splits {
            errors.push(FieldError::new(
                format!("spec.featureFlags.{name}.bucketing"),
                format!(
                    "must be flagd with {why}: flagd buckets subjects only its own way, so an \
                     FNV-1a split would give them other variants there"
                ),
            ));
        }
    }
}

/// The size bounds of [`crate::crd::limits`], which the CRD schema declares too.
pub(super) fn check_sizes(spec: &RuntimeConfigSpec, errors: &mut Vec<FieldError>) {
    at_most_entries(
        errors,
        "spec.schema",
        spec.schema.len(),
        limits::SCHEMA_KEYS,
    );
    at_most_entries(
        errors,
        "spec.values",
        spec.values.len(),
        limits::VALUES_KEYS,
    );
    at_most_entries(
        errors,
        "spec.valuesFrom",
        spec.values_from.len(),
        limits::VALUES_FROM,
    );
    for (i, from) in spec.values_from.iter().enumerate() {
        at_most_chars(
            errors,
            &format!("spec.valuesFrom[{i}].key"),
            &from.key,
            limits::NAME_LENGTH,
        );
    }
    at_most_entries(
        errors,
        "spec.featureFlags",
        spec.feature_flags.len(),
        limits::FEATURE_FLAGS,
    );
    for (name, flag) in &spec.feature_flags {
        let base = format!("spec.featureFlags.{name}");
        for (field, n) in [
            ("variants", flag.variants.len()),
            ("fractional", flag.fractional.len()),
            ("targets", flag.targets.len()),
        ] {
            at_most_entries(errors, &format!("{base}.{field}"), n, limits::VARIANTS);
        }
        let lists = [
            ("allow".to_string(), &flag.allow),
            ("deny".to_string(), &flag.deny),
        ]
        .into_iter()
        .chain(
            flag.targets
                .iter()
                .map(|(v, l)| (format!("targets.{v}"), l)),
        );
        for (list, subjects) in lists {
            let path = format!("{base}.{list}");
            at_most_entries(errors, &path, subjects.len(), limits::FLAG_SUBJECTS);
            for (j, subject) in subjects.iter().enumerate() {
                at_most_chars(
                    errors,
                    &format!("{path}[{j}]"),
                    subject,
                    limits::SUBJECT_LENGTH,
                );
            }
        }
    }
    for (key, param) in &spec.schema {
        let base = format!("spec.schema.{key}");
        if let Some(pattern) = &param.pattern {
            at_most_chars(
                errors,
                &format!("{base}.pattern"),
                pattern,
                limits::PATTERN_LENGTH,
            );
        }
        if let Some(description) = &param.description {
            at_most_chars(
                errors,
                &format!("{base}.description"),
                description,
                limits::DESCRIPTION_LENGTH,
            );
        }
        if let Some(entries) = &param.enum_ {
            at_most_entries(
                errors,
                &format!("{base}.enum"),
                entries.len(),
                limits::ENUM_VALUES,
            );
        }
    }
    if let Some(maintenance) = &spec.maintenance {
        at_most_chars(
            errors,
            "spec.maintenance.reason",
            &maintenance.reason,
            limits::REASON_LENGTH,
        );
    }
}

pub(super) fn at_most_entries(errors: &mut Vec<FieldError>, path: &str, len: usize, max: usize) {
    if len > max {
        errors.push(
            FieldError::new(path, format!("must have at most {max} entries")).with_value(len),
        );
    }
}

// Counted in characters, as the API server counts a string's maxLength.
pub(super) fn at_most_chars(errors: &mut Vec<FieldError>, path: &str, text: &str, max: usize) {
    let len = text.chars().count();
    if len > max {
        errors.push(
            FieldError::new(path, format!("must be at most {max} characters long")).with_value(len),
        );
    }
}

/// `spec.restartTargets`: at most [`limits::RESTART_TARGETS`].
pub(super) fn check_restart_targets(targets: &[RestartTarget], errors: &mut Vec<FieldError>) {
    at_most_entries(
        errors,
        "spec.restartTargets",
        targets.len(),
        limits::RESTART_TARGETS,
    );
}

/// A lower or upper bound of a parameter, in the parameter's own terms.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
pub(super) enum Bound {
    Number(f64),
    Duration(Duration),
}

/// `minimum`/`maximum` for the type: a number, or for durations a duration string or a
/// non-negative number of seconds. `None` when it is neither.
pub(super) fn bound(type_: ParamType, value: &Value) -> Option<Bound> {
    match (type_, value) {
        (ParamType::Integer | ParamType::Number, Value::Number(n)) => n.as_f64().map(Bound::Number),
        (ParamType::Duration, Value::String(s)) => {
            crate::duration::parse(s).ok().map(Bound::Duration)
        }
        (ParamType::Duration, Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Bound::Duration),
        _ => None,
    }
}

pub(super) fn bound_text(type_: ParamType, value: &Value) -> String {
    match (type_, value) {
        (ParamType::Duration, Value::Number(n)) => format!("{n}s"),
        _ => plain(value),
    }
}

pub(super) fn type_rule(type_: ParamType) -> String {
    match type_ {
        ParamType::String => "must be a string".into(),
        ParamType::Integer => "must be an integer".into(),
        ParamType::Number => "must be a number".into(),
        ParamType::Boolean => "must be a boolean (true or false)".into(),
        ParamType::Duration => DURATION_EXAMPLE.into(),
        ParamType::Json => "must be JSON".into(),
    }
}

pub(super) fn is_integral(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

pub(super) fn has_type(type_: ParamType, value: &Value) -> bool {
    match type_ {
        ParamType::String => value.is_string(),
        ParamType::Integer => value.as_number().is_some_and(is_integral),
        ParamType::Number => value.is_number(),
        ParamType::Boolean => value.is_boolean(),
        ParamType::Duration => value
            .as_str()
            .is_some_and(|s| crate::duration::parse(s).is_ok()),
        ParamType::Json => true,
    }
}

/// Numbers compared by value (1 == 1.0), exactly when both are whole.
pub(super) fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let whole = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (whole(a), whole(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// JSON equality with numbers compared by value.
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|other| json_eq(v, other)))
        }
        _ => a == b,
    }
}

pub(super) fn enum_eq(type_: ParamType, entry: &Value, value: &Value) -> bool {
    if type_ == ParamType::Duration
        && let (Some(a), Some(b)) = (entry.as_str(), value.as_str())
        && let (Ok(a), Ok(b)) = (crate::duration::parse(a), crate::duration::parse(b))
    {
        return a == b;
    }
    json_eq(entry, value)
}

/// The rules `value` breaks against `param` (type first; range, length, pattern and enum only
/// for a value of the right type). `hidden`: the value is secret, so no rule quotes any part of
/// it (a duration's parse error would).
pub(super) fn check_value(param: &Parameter, value: &Value, hidden: bool) -> Vec<String> {
    let type_ = param.type_;
    if !has_type(type_, value) {
        let rule = match (type_, value.as_str()) {
            (ParamType::Duration, Some(s)) if !hidden => match crate::duration::parse(s) {
                Err(reason) => format!("{DURATION_EXAMPLE}: {reason}"),
                Ok(_) => type_rule(type_),
            },
            _ => type_rule(type_),
        };
        return vec![rule];
    }
    let mut rules = Vec::new();
    let actual = match (type_, value) {
        (ParamType::Integer | ParamType::Number, Value::Number(n)) => n.as_f64().map(Bound::Number),
        (ParamType::Duration, Value::String(s)) => {
            crate::duration::parse(s).ok().map(Bound::Duration)
        }
        _ => None,
    };
    if let Some(actual) = actual {
        let exact = |limit: &Value| match (value, limit) {
            (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b),
            _ => bound(type_, limit).and_then(|b| actual.partial_cmp(&b)),
        };
        if let Some(min) = &param.minimum
            && exact(min) == Some(Ordering::Less)
        {
            rules.push(format!("must be at least {}", bound_text(type_, min)));
        }
        if let Some(max) = &param.maximum
            && exact(max) == Some(Ordering::Greater)
        {
            rules.push(format!("must be at most {}", bound_text(type_, max)));
        }
    }
    if let (ParamType::String, Value::String(s)) = (type_, value) {
        let chars = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
        if let Some(min) = param.min_length
            && chars < min
        {
            rules.push(format!("must be at least {min} characters long"));
        }
        if let Some(max) = param.max_length
            && chars > max
        {
            rules.push(format!("must be at most {max} characters long"));
        }
        // JSON Schema's `pattern` is an unanchored search, so `is_match` rather than a
        // whole-value match: users who want the whole value write `^...$` themselves.
        if let Some(pattern) = &param.pattern {
            match compile_pattern(pattern) {
                Ok(re) if !re.is_match(s) => {
                    rules.push(format!("must match the pattern {pattern}"));
                }
                Ok(_) => {}
                // Not skipped: a value that cannot be checked is not taken as valid.
                Err(_) => rules.push(format!(
                    "cannot be checked: its schema's pattern {pattern} does not compile"
                )),
            }
        }
    }
    if let Some(entries) = &param.enum_
        && !entries.iter().any(|entry| enum_eq(type_, entry, value))
    {
        let list: Vec<String> = entries.iter().map(plain).collect();
        rules.push(format!("must be one of [{}]", list.join(", ")));
    }
    rules
}

/// `spec.schema.<key>` is self-consistent, and its default obeys it.
pub(super) fn check_parameter(key: &str, param: &Parameter, errors: &mut Vec<FieldError>) {
    let base = format!("spec.schema.{key}");
    let type_ = param.type_;
    let type_name = type_.as_str();

    let ranged = matches!(
        type_,
        ParamType::Integer | ParamType::Number | ParamType::Duration
    );
    let mut bounds = [None, None];
    for (slot, (name, limit)) in [("minimum", &param.minimum), ("maximum", &param.maximum)]
        .into_iter()
        .enumerate()
    {
        let Some(limit) = limit else { continue };
        let path = format!("{base}.{name}");
        if !ranged {
            errors.push(
                FieldError::new(
                    path,
                    format!(
                        "only applies to integer, number and duration parameters, not {type_name}"
                    ),
                )
                .with_value(limit.clone()),
            );
            continue;
        }
        match bound(type_, limit) {
            Some(b) => bounds[slot] = Some(b),
            None => {
                let rule = if type_ == ParamType::Duration {
                    format!("{DURATION_EXAMPLE}, or a non-negative number of seconds")
                } else {
                    "must be a number".to_owned()
                };
                errors.push(FieldError::new(path, rule).with_value(limit.clone()));
            }
        }
    }
    if let ([Some(lo), Some(hi)], Some(min), Some(max)) = (bounds, &param.minimum, &param.maximum)
        && lo > hi
    {
        errors.push(
            FieldError::new(
                format!("{base}.minimum"),
                format!(
                    "must not exceed maximum ({} > {})",
                    bound_text(type_, min),
                    bound_text(type_, max)
                ),
            )
            .with_value(min.clone()),
        );
    }

    let only_strings = format!("only applies to string parameters, not {type_name}");
    for (name, length) in [
        ("minLength", param.min_length),
        ("maxLength", param.max_length),
    ] {
        let Some(length) = length else { continue };
        let path = format!("{base}.{name}");
        if type_ != ParamType::String {
            errors.push(FieldError::new(path, only_strings.clone()).with_value(length));
        } else if length < 0 {
            errors.push(FieldError::new(path, "must be at least 0").with_value(length));
        }
    }
    if type_ == ParamType::String
        && let (Some(min), Some(max)) = (param.min_length, param.max_length)
        && min > max
    {
        errors.push(
            FieldError::new(
                format!("{base}.minLength"),
                format!("must not exceed maxLength ({min} > {max})"),
            )
            .with_value(min),
        );
    }
    if let Some(pattern) = &param.pattern {
        let path = format!("{base}.pattern");
        if type_ != ParamType::String {
            errors.push(FieldError::new(path, only_strings.clone()).with_value(pattern.as_str()));
        } else if let Err(reason) = compile_pattern(pattern) {
            errors.push(
                FieldError::new(
                    path,
                    format!("must be a valid regular expression: {reason}"),
                )
                .with_value(pattern.as_str()),
            );
        }
    }

    if let Some(entries) = &param.enum_ {
        if entries.is_empty() {
            errors.push(FieldError::new(
                format!("{base}.enum"),
                "must list at least one value",
            ));
        }
        for (i, entry) in entries.iter().enumerate() {
            if !has_type(type_, entry) {
                errors.push(
                    FieldError::new(format!("{base}.enum[{i}]"), type_rule(type_))
                        .with_value(entry.clone()),
                );
            }
        }
    }

    if let Some(default) = &param.default {
        let path = format!("{base}.default");
        if param.sensitive {
            errors.push(FieldError::new(
                path,
                "must not be set on a sensitive parameter: a default would be projected into \
                 the ConfigMap; set the value through valuesFrom[].secretKeyRef",
            ));
            return;
        }
        // A default is a literal projected into the ConfigMap like any value in `values`.
        let mut hidden = false;
        if let Some((location, kind)) = find_credential_string(key, default) {
            hidden = true;
            errors.push(FieldError::new(
                path.clone(),
                credential_value_rule(key, &location, kind),
            ));
        }
        let shown = (!hidden).then(|| compact(default));
        for rule in check_value(param, default, false) {
            errors.push(FieldError::new(path.clone(), rule).with_shown(shown.clone()));
        }
    }
}

/// The value as it may appear in an error: `None` when it is sensitive or looks like a
/// credential in any way.
pub(super) fn shown(key: &str, value: &Value, param: Option<&Parameter>) -> Option<String> {
    let hidden = param.is_some_and(|p| p.sensitive)
        || is_credential_key(key)
        || credential_leak(key, value, false).is_some();
    (!hidden).then(|| compact(value))
}

/// One literal in `spec.values`.
pub(super) fn check_literal(
    spec: &RuntimeConfigSpec,
    key: &str,
    value: &Value,
    errors: &mut Vec<FieldError>,
) {
    let path = format!("spec.values.{key}");
    let param = spec.schema.get(key);
    if let Some(param) = param
        && param.sensitive
    {
        errors.push(FieldError::new(
            path,
            "is a sensitive parameter: it may only be set through valuesFrom[].secretKeyRef, \
             never as a literal in values",
        ));
        return;
    }
    // `token_ttl: {type: duration}` set to "5m" is not a credential; a json parameter can hold
    // anything, so only scalar non-string types are exempt from the key rule.
    let scalar_non_string = param.is_some_and(|p| {
        matches!(
            p.type_,
            ParamType::Integer | ParamType::Number | ParamType::Boolean | ParamType::Duration
        )
    });
    if let Some(rule) = credential_leak(key, value, scalar_non_string) {
        errors.push(FieldError::new(path.clone(), rule));
    }
    let Some(param) = param else {
        if !spec.schema.is_empty() {
            errors.push(
                FieldError::new(path, "is not declared in spec.schema")
                    .with_shown(shown(key, value, None)),
            );
        }
        return;
    };
    for rule in check_value(param, value, false) {
        errors.push(FieldError::new(path.clone(), rule).with_shown(shown(key, value, Some(param))));
    }
}

/// `spec.valuesFrom`: well-formed references, no clashes, and (with `secrets`) resolvable
/// values of the declared type.
pub(super) fn check_values_from(
    spec: &RuntimeConfigSpec,
    secrets: Option<&SecretValues>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, from) in spec.values_from.iter().enumerate() {
        let base = format!("spec.valuesFrom[{i}]");
        let key = from.key.as_str();
        let reference = &from.secret_key_ref;
        if key.is_empty() {
            errors.push(FieldError::new(format!("{base}.key"), "must not be empty"));
        } else {
            if let Some(first) = seen.get(key) {
                errors.push(
                    FieldError::new(
                        format!("{base}.key"),
                        format!(
                            "duplicates spec.valuesFrom[{first}].key: a key is read from one \
                             Secret only"
                        ),
                    )
                    .with_value(key),
                );
            } else {
                seen.insert(key, i);
            }
            // The key names a data key of the projected Secret, beside its metadata key.
            if !is_data_key(key) {
                errors.push(FieldError::new(format!("{base}.key"), DATA_KEY_RULE).with_value(key));
            } else if key == crate::projection::META_KEY {
                errors.push(
                    FieldError::new(
                        format!("{base}.key"),
                        format!(
                            "is reserved: the projected Secret carries hotconf's metadata under {}",
                            crate::projection::META_KEY
                        ),
                    )
                    .with_value(key),
                );
            }
            if spec.values.contains_key(key) {
                errors.push(
                    FieldError::new(
                        format!("{base}.key"),
                        "is also in spec.values: set either in values or in valuesFrom, not both",
                    )
                    .with_value(key),
                );
            }
            if !spec.schema.is_empty() && !spec.schema.contains_key(key) {
                errors.push(
                    FieldError::new(format!("{base}.key"), "is not declared in spec.schema")
                        .with_value(key),
                );
            }
        }
        let name_path = format!("{base}.secretKeyRef.name");
        if reference.name.is_empty() {
            errors.push(FieldError::new(name_path, "must not be empty"));
        } else if !is_dns_subdomain(&reference.name) {
            errors.push(
                FieldError::new(name_path, DNS_SUBDOMAIN_RULE).with_value(reference.name.as_str()),
            );
        }
        let key_path = format!("{base}.secretKeyRef.key");
        if reference.key.is_empty() {
            errors.push(FieldError::new(key_path, "must not be empty"));
        } else if !is_data_key(&reference.key) {
            errors
                .push(FieldError::new(key_path, DATA_KEY_RULE).with_value(reference.key.as_str()));
        }

        let Some(secrets) = secrets else { continue };
        if key.is_empty() {
            continue;
        }
        let path = format!("{base}.secretKeyRef");
        let (secret, secret_key) = (&reference.name, &reference.key);
        match secrets.get(key) {
            None => errors.push(FieldError::new(
                path,
                format!("key {secret_key:?} of Secret {secret:?} was not resolved"),
            )),
            Some(Err(reason)) => errors.push(FieldError::new(
                path,
                format!("cannot read key {secret_key:?} of Secret {secret:?}: {reason}"),
            )),
            Some(Ok(text)) => {
                if let Some(param) = spec.schema.get(key) {
                    for rule in check_secret_value(param, text) {
                        errors.push(FieldError::new(
                            path.clone(),
                            format!("the value of key {secret_key:?} in Secret {secret:?} {rule}"),
                        ));
                    }
                }
            }
        }
    }
}

/// A Secret holds text: read it as the declared type ("42" is a valid integer) and check it.
pub(super) fn check_secret_value(param: &Parameter, text: &str) -> Vec<String> {
    let value = match param.type_ {
        ParamType::String | ParamType::Duration => Value::String(text.to_owned()),
        ParamType::Integer | ParamType::Number => match text.trim().parse::<Number>() {
            Ok(n) => Value::Number(n),
            Err(_) => return vec![type_rule(param.type_)],
        },
        ParamType::Boolean => match text.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return vec![type_rule(param.type_)],
        },
        ParamType::Json => return Vec::new(),
    };
    check_value(param, &value, true)
}

pub(super) static FLAG_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
        .expect("the flag name pattern compiles")
});

pub(super) fn check_flag(name: &str, flag: &FeatureFlag, errors: &mut Vec<FieldError>) {
    let base = format!("spec.featureFlags.{name}");
    if !FLAG_NAME.is_match(name) {
        errors.push(
            FieldError::new(
                base.clone(),
                "flag name must consist of alphanumerics, '-', '_' or '.', and start and end \
                 with an alphanumeric",
            )
            .with_value(name),
        );
    }
    if let Some(percentage) = flag.rollout_percentage
        && !(0..=100).contains(&percentage)
    {
        errors.push(
            FieldError::new(
                format!("{base}.rolloutPercentage"),
                "must be between 0 and 100",
            )
            .with_value(percentage),
        );
    }
    if flag.variants.is_empty() {
        for (field, set) in [
            ("defaultVariant", flag.default_variant.is_some()),
            ("fractional", !flag.fractional.is_empty()),
            ("targets", !flag.targets.is_empty()),
        ] {
            if set {
                errors.push(FieldError::new(
                    format!("{base}.{field}"),
                    "needs variants: an on/off flag uses rolloutPercentage, allow and deny",
                ));
            }
        }
    } else {
        check_variants(&base, flag, errors);
    }
    let allowed: BTreeSet<&str> = flag.allow.iter().map(String::as_str).collect();
    for (j, subject) in flag.deny.iter().enumerate() {
        if allowed.contains(subject.as_str()) {
            errors.push(
                FieldError::new(
                    format!("{base}.deny[{j}]"),
                    "is also in allow: a subject is either allowed or denied, not both",
                )
                .with_value(subject.as_str()),
            );
        }
    }
}

// The kind of a variant's value, for "all of one type".
fn variant_type(value: &Value) -> Option<&'static str> {
    match value {
        Value::Bool(_) => Some("boolean"),
        Value::String(_) => Some("string"),
        Value::Number(_) => Some("number"),
        Value::Object(_) => Some("object"),
        Value::Null | Value::Array(_) => None,
    }
}

// A flag with variants (SPEC.md §3.1): values of one type, a default that exists, positive
// weights and targets that name variants, no subject targeted twice, and none of the on/off
// fields.
fn check_variants(base: &str, flag: &FeatureFlag, errors: &mut Vec<FieldError>) {
    let mut first_type: Option<(&str, &str)> = None;
    for (name, value) in &flag.variants {
        let path = format!("{base}.variants.{name}");
        match variant_type(value) {
            None => errors.push(FieldError::new(
                path,
                "must be a boolean, a string, a number or an object",
            )),
            Some(t) => match first_type {
                None => first_type = Some((name, t)),
                Some((first, ft)) if ft != t => errors.push(FieldError::new(
                    path,
                    format!(
                        "is a {t}, but variant {first} is a {ft}: all variants of a flag have one type"
                    ),
                )),
                Some(_) => {}
            },
        }
    }
    match &flag.default_variant {
        None => errors.push(FieldError::new(
            format!("{base}.defaultVariant"),
            "is required with variants",
        )),
        Some(d) if !flag.variants.contains_key(d) => errors.push(
            FieldError::new(format!("{base}.defaultVariant"), "names no variant")
                .with_value(d.as_str()),
        ),
        Some(_) => {}
    }
    let mut total: i64 = 0;
    for (name, weight) in &flag.fractional {
        let path = format!("{base}.fractional.{name}");
        if !flag.variants.contains_key(name) {
            errors.push(FieldError::new(path.clone(), "names no variant"));
        }
        if *weight <= 0 {
            errors.push(FieldError::new(path, "must be a positive weight").with_value(*weight));
        } else {
            total = total.saturating_add(*weight);
        }
    }
    if total > i64::from(i32::MAX) {
        errors.push(FieldError::new(
            format!("{base}.fractional"),
            format!(
                "the weights sum to {total}, more than {} (flagd's bound)",
                i32::MAX
            ),
        ));
    }
    let mut targeted: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, subjects) in &flag.targets {
        let path = format!("{base}.targets.{name}");
        if !flag.variants.contains_key(name) {
            errors.push(FieldError::new(path.clone(), "names no variant"));
        }
        for (j, subject) in subjects.iter().enumerate() {
            if let Some(other) = targeted.insert(subject, name) {
                errors.push(
                    FieldError::new(
                        format!("{path}[{j}]"),
                        format!("is also targeted to variant {other}: a subject gets one variant"),
                    )
                    .with_value(subject.as_str()),
                );
            }
        }
    }
    for (field, set) in [
        ("rolloutPercentage", flag.rollout_percentage.is_some()),
        ("allow", !flag.allow.is_empty()),
        ("deny", !flag.deny.is_empty()),
    ] {
        if set {
            errors.push(FieldError::new(
                format!("{base}.{field}"),
                "is for on/off flags: with variants, use targets and fractional",
            ));
        }
    }
}

pub(super) fn check_maintenance(maintenance: &Maintenance, errors: &mut Vec<FieldError>) {
    if let Some(until) = &maintenance.until
        && chrono::DateTime::parse_from_rfc3339(until).is_err()
    {
        errors.push(
            FieldError::new(
                "spec.maintenance.until",
                "must be an RFC 3339 timestamp such as 2025-06-01T18:00:00Z",
            )
            .with_value(until.as_str()),
        );
    }
}
