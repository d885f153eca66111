//! What an application does with its configuration, counted: reads per key by where the value
//! came from (a miss is a read that found nothing), document swaps, live subscriptions, and
//! flag evaluations by result and reason. [`Config::stats`](super::Config::stats) returns the
//! counts; [`Config::register_metrics`](super::Config::register_metrics) exposes them as
//! Prometheus metrics in the application's own registry, encoded from the same counts at each
//! scrape.
//!
//! Counting costs a shared lock and an atomic add per read. Distinct keys (and flags) are
//! bounded: past [`MAX_NAMES`] further names are counted under `_other`, so an application that
//! reads computed keys cannot grow the counts without bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::feature_flags::Reason;

/// At most this many distinct keys (and, apart, flags) are counted by name.
pub const MAX_NAMES: usize = 1024;
/// The name the others are counted under.
pub const OTHER: &str = "_other";

/// Where a read's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `HOTCONF_<KEY>` environment override.
    Environment,
    /// The projected document.
    Document,
    /// The application's default.
    Default,
    /// Nothing: a miss.
    Missing,
}

impl Source {
    const ALL: [Source; 4] = [
        Source::Environment,
        Source::Document,
        Source::Default,
        Source::Missing,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Environment => "environment",
            Source::Document => "document",
            Source::Default => "default",
            Source::Missing => "missing",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// One counter per (result, reason) of a flag: on and off for each reason.
const FLAG_SLOTS: usize = 2 * Reason::ALL.len();

fn flag_slot(on: bool, reason: Reason) -> usize {
    usize::from(on) * Reason::ALL.len() + reason as usize
}

/// Counters keyed by a bounded set of names.
#[derive(Debug)]
struct Named<const N: usize> {
    names: RwLock<HashMap<String, Arc<[AtomicU64; N]>>>,
}

impl<const N: usize> Default for Named<N> {
    fn default() -> Self {
        Named {
            names: RwLock::new(HashMap::new()),
        }
    }
}

impl<const N: usize> Named<N> {
    fn add(&self, name: &str, slot: usize) {
        if let Some(counts) = self
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            counts[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        let name = if names.len() >= MAX_NAMES && !names.contains_key(name) {
            OTHER
        } else {
            name
        };
        names
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))[slot]
            .fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> BTreeMap<String, [u64; N]> {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    std::array::from_fn(|i| v[i].load(Ordering::Relaxed)),
                )
            })
            .collect()
    }
}

/// The live counts of one handle (shared by its clones and snapshots).
#[derive(Debug, Default)]
pub struct Stats {
    reads: Named<4>,
    flags: Named<FLAG_SLOTS>,
    swaps: AtomicU64,
    subscriptions: AtomicI64,
}

impl Stats {
    pub(super) fn read(&self, key: &str, source: Source) {
        self.reads.add(key, source.index());
    }

    pub(super) fn flag(&self, flag: &str, on: bool, reason: Reason) {
        self.flags.add(flag, flag_slot(on, reason));
    }

    pub(super) fn swapped(&self) {
        self.swaps.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn subscribed(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> ClientStats {
        let reads = self.reads.read();
        let flags = self.flags.read();
        let by_key = |source: Source| -> BTreeMap<String, u64> {
            reads
                .iter()
                .filter(|(_, c)| c[source.index()] > 0)
                .map(|(k, c)| (k.clone(), c[source.index()]))
                .collect()
        };
        let mut hits: BTreeMap<String, u64> = BTreeMap::new();
        for source in [Source::Environment, Source::Document, Source::Default] {
            for (k, n) in by_key(source) {
                *hits.entry(k).or_default() += n;
            }
        }
        let misses = by_key(Source::Missing);
        ClientStats {
            reads: reads.values().flat_map(|c| c.iter()).sum(),
            misses: misses.values().sum(),
            hits,
            missed: misses,
            swaps: self.swaps.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed).max(0) as u64,
            flags: flags
                .into_iter()
                .map(|(flag, c)| {
                    let mut by = BTreeMap::new();
                    for on in [false, true] {
                        for reason in Reason::ALL {
                            let n = c[flag_slot(on, reason)];
                            if n > 0 {
                                by.insert((if on { "on" } else { "off" }, reason.as_str()), n);
                            }
                        }
                    }
                    (flag, by)
                })
                .collect(),
        }
    }
}

/// What [`Config::stats`](super::Config::stats) returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Every `get`, found or not.
    pub reads: u64,
    /// Reads that found no value.
    pub misses: u64,
    /// Reads that found a value, per key.
    pub hits: BTreeMap<String, u64>,
    /// Reads that found none, per key.
    pub missed: BTreeMap<String, u64>,
    /// New documents swapped in since the handle opened.
    pub swaps: u64,
    /// Subscriptions alive now.
    pub subscriptions: u64,
    /// Flag evaluations per flag, by (`on`/`off`, reason: `deny`, `disabled`, `allow`,
    /// `rollout`, `unknown`).
    pub flags: BTreeMap<String, BTreeMap<(&'static str, &'static str), u64>>,
}

/// Encodes a handle's [`Stats`] at each scrape.
#[derive(Debug)]
pub(super) struct StatsCollector(pub(super) Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let reads = stats.reads.read();
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "hotconf_client_reads",
            "Configuration reads by key and where the value came from (missing: none found)",
            None,
            counter.metric_type(),
        )?;
        for (key, counts) in &reads {
            for source in Source::ALL {
                let labels = [("key", key.as_str()), ("source", source.as_str())];
                ConstCounter::new(counts[source.index()]).encode(family.encode_family(&labels)?)?;
            }
        }
        let flags = stats.flags.read();
        let mut family = encoder.encode_descriptor(
            "hotconf_client_flag_evaluations",
            "Feature-flag evaluations by flag, result and reason",
            None,
            counter.metric_type(),
        )?;
        for (flag, counts) in &flags {
            for on in [false, true] {
                for reason in Reason::ALL {
                    let n = counts[flag_slot(on, reason)];
                    if n == 0 {
                        continue;
                    }
                    let result = if on { "on" } else { "off" };
                    let labels = [
                        ("flag", flag.as_str()),
                        ("result", result),
                        ("reason", reason.as_str()),
                    ];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let swaps = ConstCounter::new(stats.swaps.load(Ordering::Relaxed));
        swaps.encode(encoder.encode_descriptor(
            "hotconf_client_swaps",
            "New documents swapped in",
            None,
            swaps.metric_type(),
        )?)?;
        let subscriptions = ConstGauge::new(stats.subscriptions.load(Ordering::Relaxed));
        subscriptions.encode(encoder.encode_descriptor(
            "hotconf_client_subscriptions",
            "Subscriptions alive",
            None,
            subscriptions.metric_type(),
        )?)?;
        Ok(())
    }
}
