//! Validation of both kinds: every rule of SPEC.md §3–§5.1, as pure functions.
