//! The `PoolBudget` kind: resource budgets and connection-pool limits (SPEC.md §4). The bounds
//! and defaults its fields use live in [`super::bounds`].

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ConfigStatus, RestartPolicy, RestartTarget, Rollout, Target, bounds, cel, limits};

/// Resource budgets and connection-pool limits.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "hotconf.dev",
    version = "v1alpha1",
    kind = "PoolBudget",
    plural = "poolbudgets",
    shortname = "pb",
    category = "hotconf",
    namespaced,
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.currentRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PoolBudgetSpec {
    /// Resource budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Connection pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Pools>,
    /// Where and how the effective document is projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// How many snapshots `.status.history` keeps (1..100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: Option<i32>,
    /// Validate and record, but do not project.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Workloads to restart when a revision changes a restart-only key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::RESTART_TARGETS))]
    pub restart_targets: Vec<RestartTarget>,
    /// How restarts roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Which pods consume this config, and automatic rollback when they reject it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// Resource budgets (`spec.metrics`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// 1..500, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::MAX_CONCURRENT_OPERATIONS.min, max = bounds::MAX_CONCURRENT_OPERATIONS.max))]
    pub max_concurrent_operations: Option<i64>,
    /// 64..2048, default 512.
    #[serde(
        default,
        rename = "maxMemoryMB",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = bounds::MAX_MEMORY_MB.min, max = bounds::MAX_MEMORY_MB.max))]
    pub max_memory_mb: Option<i64>,
    /// 1..100, default 85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::MAX_CPU_PERCENT.min, max = bounds::MAX_CPU_PERCENT.max))]
    pub max_cpu_percent: Option<i64>,
    /// 1..1,000,000, default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::MAX_REQUEST_RATE_PER_MINUTE.min, max = bounds::MAX_REQUEST_RATE_PER_MINUTE.max))]
    pub max_request_rate_per_minute: Option<i64>,
    /// 1..600,000, default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::MAX_PROCESSING_TIME_MS.min, max = bounds::MAX_PROCESSING_TIME_MS.max))]
    pub max_processing_time_ms: Option<i64>,
    /// Backpressure thresholds, 0 < light < moderate < heavy <= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<Backpressure>,
}

/// Backpressure thresholds as shares of the budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = cel::backpressure()[0].clone())]
#[x_kube(validation = cel::backpressure()[1].clone())]
#[x_kube(validation = cel::backpressure()[2].clone())]
#[x_kube(validation = cel::backpressure()[3].clone())]
pub struct Backpressure {
    /// Default 0.70; above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "share")]
    pub light: Option<f64>,
    /// Default 0.85; above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "share")]
    pub moderate: Option<f64>,
    /// Default 0.95; above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "share")]
    pub heavy: Option<f64>,
}

// A share of a budget: 0 < x <= 1 (OpenAPI 3.0's boolean exclusiveMinimum, as Kubernetes has it).
fn share(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "number",
        "format": "double",
        "nullable": true,
        "minimum": 0.0,
        "exclusiveMinimum": true,
        "maximum": 1.0
    })
}

/// Connection pools (`spec.pools`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Pools {
    /// The database pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabasePool>,
    /// The Redis pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisPool>,
    /// The HTTP client pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
    /// The cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePool>,
}

/// Durations as Go and CEL write them: `30s`, `5m`, `1h30m`, `100ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The database pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::database()[0].clone())]
#[x_kube(validation = cel::database()[1].clone())]
#[x_kube(validation = cel::database()[2].clone())]
pub struct DatabasePool {
    /// 0..100, default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::DATABASE_MIN_CONNECTIONS.min, max = bounds::DATABASE_MIN_CONNECTIONS.max))]
    pub min_connections: Option<i64>,
    /// 5..100, default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::DATABASE_MAX_CONNECTIONS.min, max = bounds::DATABASE_MAX_CONNECTIONS.max))]
    pub max_connections: Option<i64>,
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub connection_timeout: Option<String>,
    /// Default 10m; shorter than maxLifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub idle_timeout: Option<String>,
    /// Default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub max_lifetime: Option<String>,
    /// 0..10, default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::DATABASE_RETRY_ATTEMPTS.min, max = bounds::DATABASE_RETRY_ATTEMPTS.max))]
    pub retry_attempts: Option<i64>,
}

/// The Redis pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::redis()[0].clone())]
pub struct RedisPool {
    /// 0..200, default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::REDIS_MIN_CONNECTIONS.min, max = bounds::REDIS_MIN_CONNECTIONS.max))]
    pub min_connections: Option<i64>,
    /// 5..200, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::REDIS_MAX_CONNECTIONS.min, max = bounds::REDIS_MAX_CONNECTIONS.max))]
    pub max_connections: Option<i64>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub connection_timeout: Option<String>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub socket_timeout: Option<String>,
    /// Default 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::duration_in_range())]
    pub retry_delay: Option<String>,
    /// 0..10, default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::REDIS_RETRY_ATTEMPTS.min, max = bounds::REDIS_RETRY_ATTEMPTS.max))]
    pub retry_attempts: Option<i64>,
}

/// The HTTP client pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::http()[0].clone())]
#[x_kube(validation = cel::http()[1].clone())]
pub struct HttpPool {
    /// 10..1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::HTTP_MAX_CONNECTIONS.min, max = bounds::HTTP_MAX_CONNECTIONS.max))]
    pub max_connections: Option<i64>,
    /// 0..1000 and at most maxConnections, default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::HTTP_MAX_KEEPALIVE_CONNECTIONS.min, max = bounds::HTTP_MAX_KEEPALIVE_CONNECTIONS.max))]
    pub max_keepalive_connections: Option<i64>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub keepalive_expiry: Option<String>,
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub timeout: Option<String>,
}

/// How the cache evicts entries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EvictionPolicy {
    /// Least recently used.
    #[serde(rename = "LRU")]
    Lru,
    /// Least frequently used.
    #[serde(rename = "LFU")]
    Lfu,
    /// By age.
    #[serde(rename = "TTL")]
    Ttl,
}

/// The cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachePool {
    /// 1..10,000,000, default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::CACHE_MAX_ENTRIES.min, max = bounds::CACHE_MAX_ENTRIES.max))]
    pub max_entries: Option<i64>,
    /// 1..65,536, default 64.
    #[serde(default, rename = "maxSizeMB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = bounds::CACHE_MAX_SIZE_MB.min, max = bounds::CACHE_MAX_SIZE_MB.max))]
    pub max_size_mb: Option<i64>,
    /// Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = cel::positive_duration())]
    pub ttl: Option<String>,
    /// Default LRU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_policy: Option<EvictionPolicy>,
}
