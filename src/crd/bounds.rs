//! PoolBudget's bounds and defaults (SPEC.md §4), in one place: the CRD schema's `minimum` and
//! `maximum`, its CEL rules, the operator's validation, the effective document's filled-in
//! defaults and the table in docs/validation.md (a test compares it) all read them from here.

/// An integer field's allowed range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntRange {
    /// Smallest allowed value.
    pub min: i64,
    /// Largest allowed value.
    pub max: i64,
}

impl IntRange {
    /// Whether `value` is in the range.
    pub fn contains(self, value: i64) -> bool {
        (self.min..=self.max).contains(&value)
    }
}

/// `metrics.maxConcurrentOperations`.
pub const MAX_CONCURRENT_OPERATIONS: IntRange = IntRange { min: 1, max: 500 };
/// `metrics.maxMemoryMB`.
pub const MAX_MEMORY_MB: IntRange = IntRange { min: 64, max: 2048 };
/// `metrics.maxCpuPercent`.
pub const MAX_CPU_PERCENT: IntRange = IntRange { min: 1, max: 100 };
/// `metrics.maxRequestRatePerMinute`.
pub const MAX_REQUEST_RATE_PER_MINUTE: IntRange = IntRange {
    min: 1,
    max: 1_000_000,
};
/// `metrics.maxProcessingTimeMs`.
pub const MAX_PROCESSING_TIME_MS: IntRange = IntRange {
    min: 1,
    max: 600_000,
};
/// `pools.database.minConnections`.
pub const DATABASE_MIN_CONNECTIONS: IntRange = IntRange { min: 0, max: 100 };
/// `pools.database.maxConnections`.
pub const DATABASE_MAX_CONNECTIONS: IntRange = IntRange { min: 5, max: 100 };
/// `pools.database.retryAttempts`.
pub const DATABASE_RETRY_ATTEMPTS: IntRange = IntRange { min: 0, max: 10 };
/// `pools.redis.minConnections`.
pub const REDIS_MIN_CONNECTIONS: IntRange = IntRange { min: 0, max: 200 };
/// `pools.redis.maxConnections`.
pub const REDIS_MAX_CONNECTIONS: IntRange = IntRange { min: 5, max: 200 };
/// `pools.redis.retryAttempts`.
pub const REDIS_RETRY_ATTEMPTS: IntRange = IntRange { min: 0, max: 10 };
/// `pools.http.maxConnections`.
pub const HTTP_MAX_CONNECTIONS: IntRange = IntRange { min: 10, max: 1000 };
/// `pools.http.maxKeepaliveConnections`.
pub const HTTP_MAX_KEEPALIVE_CONNECTIONS: IntRange = IntRange { min: 0, max: 1000 };
/// `pools.cache.maxEntries`.
pub const CACHE_MAX_ENTRIES: IntRange = IntRange {
    min: 1,
    max: 10_000_000,
};
/// `pools.cache.maxSizeMB`.
pub const CACHE_MAX_SIZE_MB: IntRange = IntRange {
    min: 1,
    max: 65_536,
};

/// Backpressure thresholds: above 0, at most 1, `light < moderate < heavy`.
pub const SHARE_MAX: f64 = 1.0;

/// Every integer field: its path, range and default, for the docs table and its test.
pub fn int_fields() -> Vec<(&'static str, IntRange, i64)> {
    vec![
        (
            "spec.metrics.maxConcurrentOperations",
            MAX_CONCURRENT_OPERATIONS,
            defaults::MAX_CONCURRENT_OPERATIONS,
        ),
        (
            "spec.metrics.maxMemoryMB",
            MAX_MEMORY_MB,
            defaults::MAX_MEMORY_MB,
        ),
        (
            "spec.metrics.maxCpuPercent",
            MAX_CPU_PERCENT,
            defaults::MAX_CPU_PERCENT,
        ),
        (
            "spec.metrics.maxRequestRatePerMinute",
            MAX_REQUEST_RATE_PER_MINUTE,
            defaults::MAX_REQUEST_RATE_PER_MINUTE,
        ),
        (
            "spec.metrics.maxProcessingTimeMs",
            MAX_PROCESSING_TIME_MS,
            defaults::MAX_PROCESSING_TIME_MS,
        ),
        (
            "spec.pools.database.minConnections",
            DATABASE_MIN_CONNECTIONS,
            defaults::DATABASE_MIN_CONNECTIONS,
        ),
        (
            "spec.pools.database.maxConnections",
            DATABASE_MAX_CONNECTIONS,
            defaults::DATABASE_MAX_CONNECTIONS,
        ),
        (
            "spec.pools.database.retryAttempts",
            DATABASE_RETRY_ATTEMPTS,
            defaults::DATABASE_RETRY_ATTEMPTS,
        ),
        (
            "spec.pools.redis.minConnections",
            REDIS_MIN_CONNECTIONS,
            defaults::REDIS_MIN_CONNECTIONS,
        ),
        (
            "spec.pools.redis.maxConnections",
            REDIS_MAX_CONNECTIONS,
            defaults::REDIS_MAX_CONNECTIONS,
        ),
        (
            "spec.pools.redis.retryAttempts",
            REDIS_RETRY_ATTEMPTS,
            defaults::REDIS_RETRY_ATTEMPTS,
        ),
        (
            "spec.pools.http.maxConnections",
            HTTP_MAX_CONNECTIONS,
            defaults::HTTP_MAX_CONNECTIONS,
        ),
        (
            "spec.pools.http.maxKeepaliveConnections",
            HTTP_MAX_KEEPALIVE_CONNECTIONS,
            defaults::HTTP_MAX_KEEPALIVE_CONNECTIONS,
        ),
        (
            "spec.pools.cache.maxEntries",
            CACHE_MAX_ENTRIES,
            defaults::CACHE_MAX_ENTRIES,
        ),
        (
            "spec.pools.cache.maxSizeMB",
            CACHE_MAX_SIZE_MB,
            defaults::CACHE_MAX_SIZE_MB,
        ),
    ]
}

/// What the effective document holds for an unset field.
pub mod defaults {
    use crate::crd::EvictionPolicy;

    /// `metrics.maxConcurrentOperations` (1..500).
    pub const MAX_CONCURRENT_OPERATIONS: i64 = 50;
    /// `metrics.maxMemoryMB` (64..2048).
    pub const MAX_MEMORY_MB: i64 = 512;
    /// `metrics.maxCpuPercent` (1..100).
    pub const MAX_CPU_PERCENT: i64 = 85;
    /// `metrics.maxRequestRatePerMinute` (1..1,000,000).
    pub const MAX_REQUEST_RATE_PER_MINUTE: i64 = 300;
    /// `metrics.maxProcessingTimeMs` (1..600,000).
    pub const MAX_PROCESSING_TIME_MS: i64 = 5000;
    /// `metrics.backpressure.light`.
    pub const BACKPRESSURE_LIGHT: f64 = 0.70;
    /// `metrics.backpressure.moderate`.
    pub const BACKPRESSURE_MODERATE: f64 = 0.85;
    /// `metrics.backpressure.heavy`.
    pub const BACKPRESSURE_HEAVY: f64 = 0.95;
    /// `pools.database.minConnections` (0..100).
    pub const DATABASE_MIN_CONNECTIONS: i64 = 5;
    /// `pools.database.maxConnections` (5..100).
    pub const DATABASE_MAX_CONNECTIONS: i64 = 20;
    /// `pools.database.connectionTimeout`.
    pub const DATABASE_CONNECTION_TIMEOUT: &str = "30s";
    /// `pools.database.idleTimeout` (shorter than maxLifetime).
    pub const DATABASE_IDLE_TIMEOUT: &str = "10m";
    /// `pools.database.maxLifetime`.
    pub const DATABASE_MAX_LIFETIME: &str = "30m";
    /// `pools.database.retryAttempts` (0..10).
    pub const DATABASE_RETRY_ATTEMPTS: i64 = 3;
    /// `pools.redis.minConnections` (0..200).
    pub const REDIS_MIN_CONNECTIONS: i64 = 5;
    /// `pools.redis.maxConnections` (5..200).
    pub const REDIS_MAX_CONNECTIONS: i64 = 50;
    /// `pools.redis.connectionTimeout`.
    pub const REDIS_CONNECTION_TIMEOUT: &str = "5s";
    /// `pools.redis.socketTimeout`.
    pub const REDIS_SOCKET_TIMEOUT: &str = "5s";
    /// `pools.redis.retryDelay`.
    pub const REDIS_RETRY_DELAY: &str = "100ms";
    /// `pools.redis.retryAttempts` (0..10).
    pub const REDIS_RETRY_ATTEMPTS: i64 = 3;
    /// `pools.http.maxConnections` (10..1000).
    pub const HTTP_MAX_CONNECTIONS: i64 = 100;
    /// `pools.http.maxKeepaliveConnections` (0..1000, at most maxConnections).
    pub const HTTP_MAX_KEEPALIVE_CONNECTIONS: i64 = 20;
    /// `pools.http.keepaliveExpiry`.
    pub const HTTP_KEEPALIVE_EXPIRY: &str = "5s";
    /// `pools.http.timeout`.
    pub const HTTP_TIMEOUT: &str = "30s";
    /// `pools.cache.maxEntries` (1..10,000,000).
    pub const CACHE_MAX_ENTRIES: i64 = 1000;
    /// `pools.cache.maxSizeMB` (1..65,536).
    pub const CACHE_MAX_SIZE_MB: i64 = 64;
    /// `pools.cache.ttl`.
    pub const CACHE_TTL: &str = "5m";
    /// `pools.cache.evictionPolicy`.
    pub const CACHE_EVICTION_POLICY: EvictionPolicy = EvictionPolicy::Lru;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/validation.md's table of PoolBudget ranges says what this module says.
    #[test]
    fn the_docs_table_is_these_bounds() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/validation.md"),
        )
        .unwrap();
        let rows: Vec<(String, String, String)> = docs
            .split("## PoolBudget ranges and defaults")
            .nth(1)
            .expect("docs/validation.md has a section 'PoolBudget ranges and defaults'")
            .split("\n## ")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("| `spec."))
            .map(|l| {
                let cells: Vec<String> = l
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').replace(',', ""))
                    .collect();
                (cells[0].clone(), cells[1].clone(), cells[2].clone())
            })
            .collect();
        let expected: Vec<(String, String, String)> = int_fields()
            .into_iter()
            .map(|(path, range, default)| {
                (
                    path.to_string(),
                    format!("{}–{}", range.min, range.max),
                    default.to_string(),
                )
            })
            .collect();
        assert_eq!(rows, expected);
    }
}
