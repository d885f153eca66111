//! Schema `pattern`s, compiled once per process and kept in a bounded cache.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use regex::Regex;

/// At most this many distinct schema `pattern`s stay compiled in [`PATTERNS`].
pub(super) const PATTERN_CACHE_CAPACITY: usize = 256;

/// Every schema `pattern` compiled so far in this process, shared by all validations, so that
/// validating the same RuntimeConfig on every reconcile compiles each pattern once.
pub(super) static PATTERNS: LazyLock<PatternCache> =
    LazyLock::new(|| PatternCache::new(PATTERN_CACHE_CAPACITY));

/// A bounded map from a `pattern` to its compiled regex, or to the reason it does not compile
/// (as [`regex_reason`] words it). When full, the next new pattern clears the whole map before
/// it is stored: no recency is tracked, so a stream of distinct patterns (hostile or not) never
/// holds more than `capacity` entries, at worst costing the recompilation of the ones in use.
pub(super) struct PatternCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Result<Arc<Regex>, String>>>,
}

impl PatternCache {
    pub(super) fn new(capacity: usize) -> Self {
        PatternCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `pattern` compiled, or why it does not compile.
    pub(super) fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        // The map is always consistent (every update is a single insert or clear), so a lock
        // poisoned by a panic elsewhere is still safe to use.
        let lock = || self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = lock().get(pattern) {
            return cached.clone();
        }
        // Compile without holding the lock: two threads may both compile a new pattern, and the
        // first to store it wins, so every caller then shares one compiled regex.
        let compiled = Regex::new(pattern)
            .map(Arc::new)
            .map_err(|error| regex_reason(&error));
        let mut entries = lock();
        if let Some(cached) = entries.get(pattern) {
            return cached.clone();
        }
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(pattern.to_owned(), compiled.clone());
        compiled
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A schema `pattern` compiled (once per process, see [`PATTERNS`]), or the reason it does not
/// compile: the last line of the regex syntax error.
pub(super) fn compile_pattern(pattern: &str) -> Result<Arc<Regex>, String> {
    PATTERNS.get(pattern)
}

/// The last line of a regex syntax error (`error: unclosed group`) without the ASCII art.
pub(super) fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.lines().last().unwrap_or_default().trim().to_owned(),
            str::to_owned,
        )
}
