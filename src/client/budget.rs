//! Typed views of a PoolBudget document (SPEC.md §4): the resource budget with its backpressure
//! thresholds, the connection-pool settings, and the pressure level for a utilization.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use crate::crd::EvictionPolicy;
use crate::crd::bounds::defaults as d;

/// `metrics`: the resource budget.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Operations in flight at most.
    pub max_concurrent_operations: u32,
    /// Memory budget in MiB.
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: u32,
    /// CPU budget in percent.
    pub max_cpu_percent: u32,
    /// Requests per minute at most.
    pub max_request_rate_per_minute: u32,
    /// Longest processing time of one operation, in milliseconds.
    pub max_processing_time_ms: u64,
    /// Utilization thresholds.
    pub backpressure: Backpressure,
}

/// `metrics.backpressure`: utilization thresholds, 0 < light < moderate < heavy ≤ 1.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Backpressure {
    /// From here on: light pressure.
    pub light: f64,
    /// From here on: moderate pressure.
    pub moderate: f64,
    /// From here on: heavy pressure.
    pub heavy: f64,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            light: d::BACKPRESSURE_LIGHT,
            moderate: d::BACKPRESSURE_MODERATE,
            heavy: d::BACKPRESSURE_HEAVY,
        }
    }
}

/// How hard to push back, from the backpressure thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PressureLevel {
    /// Below `light`.
    None,
    /// At or above `light`, below `moderate`.
    Light,
    /// At or above `moderate`, below `heavy`.
    Moderate,
    /// At or above `heavy`.
    Heavy,
}

impl Backpressure {
    /// The level for a utilization (0..1); a threshold belongs to the level it starts.
    pub fn level(&self, utilization: f64) -> PressureLevel {
        if utilization >= self.heavy {
            PressureLevel::Heavy
        } else if utilization >= self.moderate {
            PressureLevel::Moderate
        } else if utilization >= self.light {
            PressureLevel::Light
        } else {
            PressureLevel::None
        }
    }
}

/// `pools`: the connection pools.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Pools {
    /// The database pool.
    pub database: DatabasePool,
    /// The Redis pool.
    pub redis: RedisPool,
    /// The HTTP client pool.
    pub http: HttpPool,
    /// The cache.
    pub cache: CachePool,
}

/// `pools.database`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabasePool {
    /// Connections kept open.
    pub min_connections: u32,
    /// Connections at most.
    pub max_connections: u32,
    /// How long to wait for a connection.
    #[serde(deserialize_with = "duration")]
    pub connection_timeout: Duration,
    /// How long an idle connection is kept.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long a connection lives.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// Retries of a failed connection attempt.
    pub retry_attempts: u32,
}

/// `pools.redis`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisPool {
    /// Connections kept open.
    pub min_connections: u32,
    /// Connections at most.
    pub max_connections: u32,
    /// How long to wait for a connection.
    #[serde(deserialize_with = "duration")]
    pub connection_timeout: Duration,
    /// How long a socket operation may take.
    #[serde(deserialize_with = "duration")]
    pub socket_timeout: Duration,
    /// The wait between retries.
    #[serde(deserialize_with = "duration")]
    pub retry_delay: Duration,
    /// Retries of a failed operation.
    pub retry_attempts: u32,
}

/// `pools.http`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPool {
    /// Connections at most.
    pub max_connections: u32,
    /// Idle keep-alive connections at most.
    pub max_keepalive_connections: u32,
    /// How long an idle keep-alive connection is kept.
    #[serde(deserialize_with = "duration")]
    pub keepalive_expiry: Duration,
    /// How long a request may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `pools.cache`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachePool {
    /// Entries at most.
    pub max_entries: u64,
    /// Size at most, in MiB.
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: u64,
    /// How long an entry lives.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How entries are evicted.
    pub eviction_policy: EvictionPolicy,
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    crate::duration::parse(&text)
        .map_err(|e| serde::de::Error::custom(format!("duration {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_at_and_between_the_thresholds() {
        let b = Backpressure::default();
        assert_eq!(b.level(0.0), PressureLevel::None);
        assert_eq!(b.level(0.6999), PressureLevel::None);
        assert_eq!(b.level(0.70), PressureLevel::Light);
        assert_eq!(b.level(0.85), PressureLevel::Moderate);
        assert_eq!(b.level(0.95), PressureLevel::Heavy);
        assert_eq!(b.level(1.5), PressureLevel::Heavy);
        assert!(PressureLevel::Heavy > PressureLevel::Light);
    }
}
