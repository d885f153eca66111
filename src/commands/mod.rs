//! The user-facing CLI commands (SPEC.md §7): offline `validate` and `render` for GitOps CI, and
//! `history`, `diff`, `rollback`, `export`, `reset` and `import` against a cluster.
//!
//! The offline commands run the operator's own code: [`crate::kinds::ConfigResource::validate`]
//! and [`crate::kinds::ConfigResource::evaluate`] with the projection builders, so CI judges a
//! change exactly as the operator will. The cluster commands read `.status.history`; `rollback`
//! writes only the `hotconf.dev/rollback-to` annotation, `reset --apply` and `import` write a
//! spec (as field manager `hotconf-cli`). Every failure ends as one line on stderr and a
//! non-zero exit code.

use std::process::ExitCode;

mod cluster;
mod diff;
mod export;
mod history;
mod import;
mod input;
mod render;
mod reset;
mod rollback;
mod validate;

pub use cluster::{ClusterArgs, ObjectRef};
pub use diff::DiffArgs;
pub use export::ExportArgs;
pub use history::HistoryArgs;
pub use import::ImportArgs;
pub use render::RenderArgs;
pub use reset::ResetArgs;
pub use rollback::RollbackArgs;
pub use validate::{ValidateArgs, problems_in};

/// The tool subcommands, flattened into `hotconf`'s own.
#[derive(clap::Subcommand, Debug)]
pub enum Tools {
    /// Validate RuntimeConfig and PoolBudget manifests offline, exactly as the operator would.
    ///
    /// Prints every error as `file:line Kind/namespace/name: field.path: message` (the line
    /// where the document starts, from 1) and exits 1 on any error, 0 otherwise. Fields the CRD
    /// does not declare and fields of the wrong type are errors too. Other kinds are skipped with a note on
    /// stderr. A `valuesFrom` reference is resolved from a Secret manifest among the inputs (same
    /// namespace); otherwise it cannot be checked offline, which is a note, or an error with
    /// `--strict-refs`.
    Validate(ValidateArgs),
    /// Print the ConfigMaps (and the shape of the Secrets) the operator would project, offline.
    ///
    /// The document key holds the bytes the operator writes. Offline, the revision is unknown
    /// (no `hotconf.dev/revision` annotation), Secret values are `<redacted>`, and a `valuesFrom`
    /// fingerprint (salted with the Secret's uid in the cluster) is `null`: such a document
    /// differs from the projected one there, so it carries no `hotconf.dev/hash` annotation.
    /// Invalid objects are reported on stderr (exit 1); paused objects are skipped.
    Render(RenderArgs),
    /// Show the revision history of an object: `history rtc/NAME`.
    ///
    /// MARK: `current` is projected now, `pinned` is held by a rollback, `latest` is the spec's
    /// newest revision while another one is projected.
    History(HistoryArgs),
    /// Show a unified diff of two revisions' documents: `diff rtc/NAME 2 3`.
    Diff(DiffArgs),
    /// Pin a revision from history (`--to N|previous`) or release the pin (`--clear`), and wait
    /// until the operator has projected it.
    ///
    /// Only the `hotconf.dev/rollback-to` annotation is written, never the spec. The pin holds
    /// until `--clear` or until the spec changes.
    Rollback(RollbackArgs),
    /// Print a manifest whose spec reproduces a revision, ready to commit to Git.
    ///
    /// A RuntimeConfig keeps the current schema and target; values, valuesFrom, feature flags
    /// and maintenance come from the snapshot. A warning on stderr names any document key the
    /// export would not reproduce (when the schema changed since that revision).
    Export(ExportArgs),
    /// Return values to their schema defaults: `reset rtc/NAME --keys a,b`.
    ///
    /// Prints the manifest whose spec no longer sets those keys (so the schema's defaults apply),
    /// ready to commit; `--apply` writes it as one change with a change reason and waits for
    /// the operator's revision. Without `--keys`, every set key that has a default is reset.
    Reset(ResetArgs),
    /// Apply RuntimeConfig/PoolBudget manifests (an export) back: `import -f export.yaml`.
    ///
    /// Validated first, exactly as the operator validates (valuesFrom Secrets read from the
    /// cluster): any problem is printed and nothing is applied (exit 1). Then server-side apply
    /// as field manager `hotconf-cli` (`--force-conflicts` takes fields over); `--dry-run`
    /// makes them server dry runs.
    Import(ImportArgs),
}

/// Runs a tool subcommand.
pub async fn run(tools: Tools) -> anyhow::Result<ExitCode> {
    match tools {
        Tools::Validate(args) => validate::run(args),
        Tools::Render(args) => render::run(args),
        Tools::History(args) => history::run(args).await,
        Tools::Diff(args) => diff::run(args).await,
        Tools::Rollback(args) => rollback::run(args).await,
        Tools::Export(args) => export::run(args).await,
        Tools::Reset(args) => reset::run(args).await,
        Tools::Import(args) => import::run(args).await,
    }
}

/// The `--output` choices of the commands that print data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text for people.
    Text,
    /// JSON for programs.
    Json,
}
