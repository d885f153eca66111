//! PoolBudget rules: the ranges of SPEC.md §4 and the cross-field rules on the effective
//! values (defaults filled in).

use super::*;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::crd::{
    Backpressure, CachePool, DatabasePool, HttpPool, Metrics, PoolBudgetSpec, Pools, RedisPool,
};

use crate::crd::{IntRange, bounds};

/// All errors of a PoolBudget spec: the ranges of SPEC.md §4, and the cross-field rules on the
/// values with defaults filled in (only `minConnections: 30` set breaks the default max of 20).
/// A cross-field rule is skipped while one of its operands is itself invalid: the range error
/// says enough.
pub fn validate_pool_budget(spec: &PoolBudgetSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(metrics) = &spec.metrics {
        check_metrics(metrics, &mut errors);
    }
    if let Some(Pools {
        database,
        redis,
        http,
        cache,
    }) = &spec.pools
    {
        if let Some(database) = database {
            check_database(database, &mut errors);
        }
        if let Some(redis) = redis {
            check_redis(redis, &mut errors);
        }
        if let Some(http) = http {
            check_http(http, &mut errors);
        }
        if let Some(cache) = cache {
            check_cache(cache, &mut errors);
        }
    }
    check_restart_targets(&spec.restart_targets, &mut errors);
    if spec.target.as_ref().and_then(|t| t.format) == Some(crate::crd::Format::Flagd) {
        errors.push(FieldError::new(
            "spec.target.format",
            "flagd writes feature flags, and a PoolBudget has none: use yaml, json, properties \
             or env",
        ));
    }
    if spec
        .target
        .as_ref()
        .is_some_and(|t| t.flagd_file_name.is_some())
    {
        errors.push(FieldError::new(
            "spec.target.flagdFileName",
            "writes feature flags, and a PoolBudget has none",
        ));
    }
    errors.extend(validate_common(
        spec.target.as_ref(),
        spec.revision_history_limit,
    ));
    errors
}

/// Checks `value` against `lo..=hi`; true when it is unset or in range.
pub(super) fn int_in_range(
    errors: &mut Vec<FieldError>,
    path: String,
    value: Option<i64>,
    range: IntRange,
) -> bool {
    match value {
        Some(v) if !range.contains(v) => {
            let IntRange { min, max } = range;
            errors.push(
                FieldError::new(path, format!("must be between {min} and {max}")).with_value(v),
            );
            false
        }
        _ => true,
    }
}

/// The effective duration of a field (its default when unset), or `None` when the set value is
/// invalid (reported). Only `allow_zero` fields may be `0s`.
pub(super) fn duration_field(
    errors: &mut Vec<FieldError>,
    path: String,
    value: Option<&String>,
    default: &str,
    allow_zero: bool,
) -> Option<Duration> {
    let Some(text) = value else {
        return crate::duration::parse(default).ok();
    };
    match crate::duration::parse(text) {
        Err(reason) => {
            errors.push(
                FieldError::new(path, format!("{DURATION_EXAMPLE}: {reason}"))
                    .with_value(text.as_str()),
            );
            None
        }
        Ok(d) if d.is_zero() && !allow_zero => {
            errors.push(FieldError::new(path, "must be greater than 0").with_value(text.as_str()));
            None
        }
        Ok(d) => Some(d),
    }
}

/// One operand of a cross-field rule: its JSON name, its value as text, and whether the user set
/// it (otherwise it is the default).
pub(super) struct Side {
    name: &'static str,
    text: String,
    set: bool,
    json: Value,
}

impl Side {
    fn new(
        name: &'static str,
        value: Option<impl Into<Value> + fmt::Display>,
        default: impl Into<Value> + fmt::Display,
    ) -> Self {
        match value {
            Some(v) => Side {
                name,
                text: v.to_string(),
                set: true,
                json: v.into(),
            },
            None => Side {
                name,
                text: default.to_string(),
                set: false,
                json: default.into(),
            },
        }
    }
}

/// How the two operands of a cross-field rule must be ordered.
#[derive(Clone, Copy)]
pub(super) enum Order {
    /// lower <= upper
    AtMost,
    /// lower < upper
    Below,
    /// lower < upper, for durations
    Shorter,
}

/// Reports that `lower` and `upper` are out of order. The error names the field the user set
/// (the lower one when both are), and quotes both values.
pub(super) fn out_of_order(
    errors: &mut Vec<FieldError>,
    base: &str,
    order: Order,
    lower: Side,
    upper: Side,
) {
    let (lower_words, lower_op, upper_words, upper_op) = match order {
        Order::AtMost => ("must not exceed", ">", "must not be below", "<"),
        Order::Below => ("must be below", ">=", "must be above", "<="),
        Order::Shorter => ("must be shorter than", ">=", "must be longer than", "<="),
    };
    let (named, other, words, op) = if lower.set || !upper.set {
        (lower, upper, lower_words, lower_op)
    } else {
        (upper, lower, upper_words, upper_op)
    };
    let note = if other.set { "" } else { ", its default" };
    errors.push(
        FieldError::new(
            format!("{base}.{}", named.name),
            format!(
                "{words} {} ({} {op} {}{note})",
                other.name, named.text, other.text
            ),
        )
        .with_value(named.json),
    );
}

pub(super) fn check_metrics(metrics: &Metrics, errors: &mut Vec<FieldError>) {
    let base = "spec.metrics";
    int_in_range(
        errors,
        format!("{base}.maxConcurrentOperations"),
        metrics.max_concurrent_operations,
        bounds::MAX_CONCURRENT_OPERATIONS,
    );
    int_in_range(
        errors,
        format!("{base}.maxMemoryMB"),
        metrics.max_memory_mb,
        bounds::MAX_MEMORY_MB,
    );
    int_in_range(
        errors,
        format!("{base}.maxCpuPercent"),
        metrics.max_cpu_percent,
        bounds::MAX_CPU_PERCENT,
    );
    int_in_range(
        errors,
        format!("{base}.maxRequestRatePerMinute"),
        metrics.max_request_rate_per_minute,
        bounds::MAX_REQUEST_RATE_PER_MINUTE,
    );
    int_in_range(
        errors,
        format!("{base}.maxProcessingTimeMs"),
        metrics.max_processing_time_ms,
        bounds::MAX_PROCESSING_TIME_MS,
    );
    if let Some(backpressure) = &metrics.backpressure {
        check_backpressure(backpressure, errors);
    }
}

pub(super) fn check_backpressure(bp: &Backpressure, errors: &mut Vec<FieldError>) {
    let base = "spec.metrics.backpressure";
    let mut valid = |name: &str, value: Option<f64>| match value {
        Some(v) if !(v > 0.0 && v <= 1.0) => {
            errors.push(
                FieldError::new(
                    format!("{base}.{name}"),
                    "must be greater than 0 and at most 1",
                )
                .with_value(v),
            );
            false
        }
        _ => true,
    };
    let ok = [
        valid("light", bp.light),
        valid("moderate", bp.moderate),
        valid("heavy", bp.heavy),
    ];
    let light = bp.light.unwrap_or(defaults::BACKPRESSURE_LIGHT);
    let moderate = bp.moderate.unwrap_or(defaults::BACKPRESSURE_MODERATE);
    let heavy = bp.heavy.unwrap_or(defaults::BACKPRESSURE_HEAVY);
    if ok[0] && ok[1] && light >= moderate {
        out_of_order(
            errors,
            base,
            Order::Below,
            Side::new("light", bp.light, defaults::BACKPRESSURE_LIGHT),
            Side::new("moderate", bp.moderate, defaults::BACKPRESSURE_MODERATE),
        );
    }
    if ok[1] && ok[2] && moderate >= heavy {
        out_of_order(
            errors,
            base,
            Order::Below,
            Side::new("moderate", bp.moderate, defaults::BACKPRESSURE_MODERATE),
            Side::new("heavy", bp.heavy, defaults::BACKPRESSURE_HEAVY),
        );
    }
}

/// `minConnections <= maxConnections` on the effective values.
pub(super) fn min_at_most_max(
    errors: &mut Vec<FieldError>,
    base: &str,
    min: Option<i64>,
    min_default: i64,
    max: Option<i64>,
    max_default: i64,
) {
    if min.unwrap_or(min_default) > max.unwrap_or(max_default) {
        out_of_order(
            errors,
            base,
            Order::AtMost,
            Side::new("minConnections", min, min_default),
            Side::new("maxConnections", max, max_default),
        );
    }
}

pub(super) fn check_database(pool: &DatabasePool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.database";
    let min_ok = int_in_range(
        errors,
        format!("{base}.minConnections"),
        pool.min_connections,
        bounds::DATABASE_MIN_CONNECTIONS,
    );
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        bounds::DATABASE_MAX_CONNECTIONS,
    );
    if min_ok && max_ok {
        min_at_most_max(
            errors,
            base,
            pool.min_connections,
            DATABASE_MIN_CONNECTIONS,
            pool.max_connections,
            DATABASE_MAX_CONNECTIONS,
        );
    }
    duration_field(
        errors,
        format!("{base}.connectionTimeout"),
        pool.connection_timeout.as_ref(),
        DATABASE_CONNECTION_TIMEOUT,
        false,
    );
    let idle = duration_field(
        errors,
        format!("{base}.idleTimeout"),
        pool.idle_timeout.as_ref(),
        DATABASE_IDLE_TIMEOUT,
        false,
    );
    let lifetime = duration_field(
        errors,
        format!("{base}.maxLifetime"),
        pool.max_lifetime.as_ref(),
        DATABASE_MAX_LIFETIME,
        false,
    );
    if let (Some(idle), Some(lifetime)) = (idle, lifetime)
        && idle >= lifetime
    {
        out_of_order(
            errors,
            base,
            Order::Shorter,
            Side::new(
                "idleTimeout",
                pool.idle_timeout.clone(),
                DATABASE_IDLE_TIMEOUT,
            ),
            Side::new(
                "maxLifetime",
                pool.max_lifetime.clone(),
                DATABASE_MAX_LIFETIME,
            ),
        );
    }
    int_in_range(
        errors,
        format!("{base}.retryAttempts"),
        pool.retry_attempts,
        bounds::DATABASE_RETRY_ATTEMPTS,
    );
}

pub(super) fn check_redis(pool: &RedisPool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.redis";
    let min_ok = int_in_range(
        errors,
        format!("{base}.minConnections"),
        pool.min_connections,
        bounds::REDIS_MIN_CONNECTIONS,
    );
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        bounds::REDIS_MAX_CONNECTIONS,
    );
    if min_ok && max_ok {
        min_at_most_max(
            errors,
            base,
            pool.min_connections,
            REDIS_MIN_CONNECTIONS,
            pool.max_connections,
            REDIS_MAX_CONNECTIONS,
        );
    }
    duration_field(
        errors,
        format!("{base}.connectionTimeout"),
        pool.connection_timeout.as_ref(),
        REDIS_CONNECTION_TIMEOUT,
        false,
    );
    duration_field(
        errors,
        format!("{base}.socketTimeout"),
        pool.socket_timeout.as_ref(),
        REDIS_SOCKET_TIMEOUT,
        false,
    );
    // Retrying at once is a legitimate choice; a zero timeout is not.
    duration_field(
        errors,
        format!("{base}.retryDelay"),
        pool.retry_delay.as_ref(),
        REDIS_RETRY_DELAY,
        true,
    );
    int_in_range(
        errors,
        format!("{base}.retryAttempts"),
        pool.retry_attempts,
        bounds::REDIS_RETRY_ATTEMPTS,
    );
}

pub(super) fn check_http(pool: &HttpPool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.http";
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        bounds::HTTP_MAX_CONNECTIONS,
    );
    let keepalive_ok = int_in_range(
        errors,
        format!("{base}.maxKeepaliveConnections"),
        pool.max_keepalive_connections,
        bounds::HTTP_MAX_KEEPALIVE_CONNECTIONS,
    );
    let keepalive = pool
        .max_keepalive_connections
        .unwrap_or(HTTP_MAX_KEEPALIVE_CONNECTIONS);
    if max_ok && keepalive_ok && keepalive > pool.max_connections.unwrap_or(HTTP_MAX_CONNECTIONS) {
        out_of_order(
            errors,
            base,
            Order::AtMost,
            Side::new(
                "maxKeepaliveConnections",
                pool.max_keepalive_connections,
                HTTP_MAX_KEEPALIVE_CONNECTIONS,
            ),
            Side::new("maxConnections", pool.max_connections, HTTP_MAX_CONNECTIONS),
        );
    }
    duration_field(
        errors,
        format!("{base}.keepaliveExpiry"),
        pool.keepalive_expiry.as_ref(),
        HTTP_KEEPALIVE_EXPIRY,
        false,
    );
    duration_field(
        errors,
        format!("{base}.timeout"),
        pool.timeout.as_ref(),
        HTTP_TIMEOUT,
        false,
    );
}

pub(super) fn check_cache(pool: &CachePool, errors: &mut Vec<FieldError>) {
    // evictionPolicy is an enum type: serde already refuses anything but LRU, LFU and TTL.
    let base = "spec.pools.cache";
    int_in_range(
        errors,
        format!("{base}.maxEntries"),
        pool.max_entries,
        bounds::CACHE_MAX_ENTRIES,
    );
    int_in_range(
        errors,
        format!("{base}.maxSizeMB"),
        pool.max_size_mb,
        bounds::CACHE_MAX_SIZE_MB,
    );
    duration_field(
        errors,
        format!("{base}.ttl"),
        pool.ttl.as_ref(),
        defaults::CACHE_TTL,
        false,
    );
}
