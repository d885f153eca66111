//! `hotconf diff KIND/NAME A B`: a unified diff of two snapshots' documents, each rendered as
//! canonical YAML, with `--- revision A` / `+++ revision B` headers.

use std::process::ExitCode;

use similar::TextDiff;

use super::cluster::{ClusterArgs, ObjectRef, RevisionArg, Target, connect, find_snapshot};
use crate::crd::Format;
use crate::document;

/// Arguments of `hotconf diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The object, `rtc/NAME` or `pb/NAME`.
    #[arg(value_name = "KIND/NAME")]
    pub object: String,
    /// The old revision: a number, `current`, `latest` or `previous`.
    #[arg(value_name = "A")]
    pub from: RevisionArg,
    /// The new revision (default: `current`).
    #[arg(value_name = "B", default_value = "current")]
    pub to: RevisionArg,
    /// Lines of context around each change.
    #[arg(
        short = 'U',
        long = "unified",
        env = "HOTCONF_DIFF_UNIFIED",
        default_value_t = 3
    )]
    pub unified: usize,
    /// Exit with 1 when the documents differ (as `git diff --exit-code` does).
    #[arg(long, env = "HOTCONF_DIFF_EXIT_CODE")]
    pub exit_code: bool,
    /// How to reach the cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `hotconf diff`.
pub async fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    // A wrong kind is refused before any connection is made.
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    let cluster = connect(&args.cluster).await?;
    let target = Target {
        cluster: &cluster,
        object,
    };
    let status = target.get().await?.status();
    let a = find_snapshot(&status, args.from, &target)?;
    let b = find_snapshot(&status, args.to, &target)?;
    let text = unified(
        &document::render(&a.document.value(), Format::Yaml),
        &document::render(&b.document.value(), Format::Yaml),
        a.revision,
        b.revision,
        args.unified,
    );
    print!("{text}");
    Ok(if args.exit_code && !text.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The unified diff of two YAML texts; empty when they are the same.
pub fn unified(old: &str, new: &str, a: i64, b: i64, context: usize) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(context)
        .header(&format!("revision {a}"), &format!("revision {b}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_has_revision_headers_and_changed_lines() {
        let text = unified("a: 1\nb: 2\n", "a: 1\nb: 3\n", 1, 3, 3);
        assert!(
            text.starts_with("--- revision 1\n+++ revision 3\n@@"),
            "{text}"
        );
        assert!(text.contains("\n-b: 2\n+b: 3\n"), "{text}");
        assert_eq!(unified("a: 1\n", "a: 1\n", 1, 2, 3), "");
    }
}
