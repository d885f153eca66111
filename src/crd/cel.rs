//! The CRDs' CEL rules (`x-kubernetes-validations`), built from the same bounds and defaults as
//! the operator's own validation, so that a server that enforces them refuses what the operator
//! refuses, on the same field.
//!
//! Every rule names its field (`fieldPath`). A cross-field rule compares the values with their
//! defaults filled in, as the operator does, and like the operator it stays quiet while one of
//! its operands is itself invalid (out of range, not a duration): the error on that operand says
//! enough. It names the operand the user set, the lower one when both are, so the two layers
//! agree on where the problem is.
//!
//! Rules that need to see into free-form JSON (`values`, a parameter's `default`, `minimum`,
//! `maximum` and `enum`) cannot be written in CEL, which has no type for such fields; the operator
//! and the admission webhook enforce those (docs/validation.md lists them).

use kube::core::{Message, Rule};

use super::DURATION_PATTERN;
use super::bounds::{self, IntRange, defaults::*};

/// One side of a cross-field rule.
struct Operand {
    /// The JSON field name.
    name: &'static str,
    /// Its default, as a CEL literal.
    default: String,
    /// A CEL expression that is true when `$v` is a valid value of the field.
    valid: String,
    /// How a value reads in CEL (`v`, or `duration(v)`).
    compare: fn(&str) -> String,
    /// For integers: the default and the smallest valid value, to tell whether a valid value
    /// can lie below the other side's default at all.
    ints: Option<(i64, i64)>,
}

fn plain(v: &str) -> String {
    v.to_string()
}

fn as_duration(v: &str) -> String {
    format!("duration({v})")
}

fn int(name: &'static str, default: i64, range: IntRange) -> Operand {
    Operand {
        name,
        default: default.to_string(),
        valid: format!("($v >= {} && $v <= {})", range.min, range.max),
        compare: plain,
        ints: Some((default, range.min)),
    }
}

fn share(name: &'static str, default: f64) -> Operand {
    Operand {
        name,
        default: format!("{default:?}"),
        valid: "($v > 0.0 && $v <= 1.0)".into(),
        compare: plain,
        ints: None,
    }
}

fn duration(name: &'static str, default: &str) -> Operand {
    Operand {
        name,
        default: format!("'{default}'"),
        valid: format!("($v.matches(r'{DURATION_PATTERN}') && duration($v) > duration('0s'))"),
        compare: as_duration,
        ints: None,
    }
}

impl Operand {
    fn field(&self) -> String {
        format!("self.{}", self.name)
    }

    /// True when the field is set to an invalid value (the rule then says nothing).
    fn set_and_invalid(&self) -> String {
        let f = self.field();
        format!("(has({f}) && !{})", self.valid.replace("$v", &f))
    }

    /// The effective value: the field, or its default.
    fn effective(&self) -> String {
        let f = self.field();
        (self.compare)(&format!("(has({f}) ? {f} : {})", self.default))
    }
}

/// `lower op upper` on the effective values, as two rules: one naming `lower` when it is set,
/// one naming `upper` when only it is set (both unset: the defaults agree). The second is left
/// out when no valid `upper` can break it (database: the smallest `maxConnections`, 5, is the
/// default `minConnections`): a rule must be able to fire.
fn ordered(lower: Operand, op: &str, upper: Operand, words: &str) -> Vec<Rule> {
    let guard = format!("{} || {}", lower.set_and_invalid(), upper.set_and_invalid());
    let (l, u) = (lower.field(), upper.field());
    let named_lower = Rule::new(format!(
        "!has({l}) || {guard} || {} {op} {}",
        lower.effective(),
        upper.effective()
    ))
    .message(Message::Message(format!(
        "{} {words} {}",
        lower.name, upper.name
    )))
    .field_path(format!(".{}", lower.name));
    let named_upper = Rule::new(format!(
        "has({l}) || !has({u}) || {guard} || {} {op} {}",
        (lower.compare)(&lower.default),
        (upper.compare)(&u)
    ))
    .message(Message::Message(format!(
        "{} {words} {} (its default, {})",
        lower.name,
        upper.name,
        lower.default.trim_matches('\'')
    )))
    .field_path(format!(".{}", upper.name));
    let upper_can_break = match (lower.ints, upper.ints, op) {
        (Some((lower_default, _)), Some((_, upper_min)), "<=") => upper_min < lower_default,
        (Some((lower_default, _)), Some((_, upper_min)), _) => upper_min <= lower_default,
        _ => true,
    };
    if upper_can_break {
        vec![named_lower, named_upper]
    } else {
        vec![named_lower]
    }
}

/// `spec.metrics.backpressure`: light < moderate < heavy.
pub fn backpressure() -> Vec<Rule> {
    let light = || share("light", BACKPRESSURE_LIGHT);
    let moderate = || share("moderate", BACKPRESSURE_MODERATE);
    let heavy = || share("heavy", BACKPRESSURE_HEAVY);
    let mut rules = Vec::new();
    rules.extend(ordered(light(), "<", moderate(), "must be below"));
    rules.extend(ordered(moderate(), "<", heavy(), "must be below"));
    rules
}

/// `spec.pools.database`: minConnections <= maxConnections, idleTimeout < maxLifetime.
pub fn database() -> Vec<Rule> {
    let mut rules = Vec::new();
    rules.extend(ordered(
        int(
            "minConnections",
            DATABASE_MIN_CONNECTIONS,
            bounds::DATABASE_MIN_CONNECTIONS,
        ),
        "<=",
        int(
            "maxConnections",
            DATABASE_MAX_CONNECTIONS,
            bounds::DATABASE_MAX_CONNECTIONS,
        ),
        "must not exceed",
    ));
    rules.extend(ordered(
        duration("idleTimeout", DATABASE_IDLE_TIMEOUT),
        "<",
        duration("maxLifetime", DATABASE_MAX_LIFETIME),
        "must be shorter than",
    ));
    rules
}

/// `spec.pools.redis`: minConnections <= maxConnections.
pub fn redis() -> Vec<Rule> {
    ordered(
        int(
            "minConnections",
            REDIS_MIN_CONNECTIONS,
            bounds::REDIS_MIN_CONNECTIONS,
        ),
        "<=",
        int(
            "maxConnections",
            REDIS_MAX_CONNECTIONS,
            bounds::REDIS_MAX_CONNECTIONS,
        ),
        "must not exceed",
    )
}

/// `spec.pools.http`: maxKeepaliveConnections <= maxConnections.
pub fn http() -> Vec<Rule> {
    ordered(
        int(
            "maxKeepaliveConnections",
            HTTP_MAX_KEEPALIVE_CONNECTIONS,
            bounds::HTTP_MAX_KEEPALIVE_CONNECTIONS,
        ),
        "<=",
        int(
            "maxConnections",
            HTTP_MAX_CONNECTIONS,
            bounds::HTTP_MAX_CONNECTIONS,
        ),
        "must not exceed",
    )
}

/// A duration field that must be longer than zero (a timeout, a lifetime, a TTL).
pub fn positive_duration() -> Rule {
    Rule::new(format!(
        "!self.matches(r'{DURATION_PATTERN}') || duration(self) > duration('0s')"
    ))
    .message("must be greater than 0")
}

/// A duration field that may be zero (a retry delay): it must still fit Kubernetes' (and Go's)
/// duration, about 292 years; a longer one fails to evaluate, which the server reports.
pub fn duration_in_range() -> Rule {
    Rule::new(format!(
        "!self.matches(r'{DURATION_PATTERN}') || duration(self) >= duration('0s')"
    ))
    .message("must be at most about 292 years")
}

/// A parameter's `minLength`, `maxLength` and `pattern` apply to strings only, and
/// `minLength <= maxLength`.
pub fn parameter() -> Vec<Rule> {
    let mut rules: Vec<Rule> = ["minLength", "maxLength", "pattern"]
        .into_iter()
        .map(|field| {
            Rule::new(format!("!has(self.{field}) || self.type == 'string'"))
                .message("only applies to string parameters")
                .field_path(format!(".{field}"))
        })
        .collect();
    rules.push(
        Rule::new(
            "self.type != 'string' || !has(self.minLength) || !has(self.maxLength) \
             || self.minLength <= self.maxLength",
        )
        .message("minLength must not exceed maxLength")
        .field_path(".minLength"),
    );
    rules
}

/// `spec`: with a schema, every key read from a Secret is declared in it.
pub fn values_from_declared() -> Rule {
    Rule::new(
        "!has(self.valuesFrom) || !has(self.schema) || size(self.schema) == 0 \
         || self.valuesFrom.all(v, v.key in self.schema)",
    )
    .message("every valuesFrom key must be declared in spec.schema")
    .field_path(".valuesFrom")
}

/// A data key (ConfigMap or Secret) is neither `.` nor `..`.
pub fn data_key() -> Rule {
    Rule::new("self != '.' && self != '..'").message("must not be '.' or '..'")
}
