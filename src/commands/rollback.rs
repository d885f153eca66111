//! `hotconf rollback KIND/NAME --to N|previous` sets `hotconf.dev/rollback-to` and waits until
//! the operator shows the pin in `.status` (`rollback.targetRevision` and `currentRevision`);
//! `--clear` removes the annotation and waits until `.status.rollback` is gone. Only the
//! annotation is written: the spec is never touched, so GitOps tools see no drift.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::json;

use super::cluster::{ClusterArgs, ObjectRef, Target, available, connect};
use crate::crd::{ConfigStatus, names};
use crate::history::{RollbackRequest, parse_rollback};

/// Arguments of `hotconf rollback`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("action").required(true).args(["to", "clear"]))]
pub struct RollbackArgs {
    /// The object, `rtc/NAME` or `pb/NAME`.
    #[arg(value_name = "KIND/NAME")]
    pub object: String,
    /// The revision to pin: a number from `hotconf history`, or `previous`.
    #[arg(long, value_name = "N|previous")]
    pub to: Option<String>,
    /// Remove the pin: the current spec is projected again.
    #[arg(long)]
    pub clear: bool,
    /// How long to wait for the operator (`0s`: do not wait).
    #[arg(
        long,
        env = "HOTCONF_ROLLBACK_TIMEOUT",
        default_value = "60s",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,
    /// How to reach the cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub(super) fn parse_timeout(text: &str) -> Result<Duration, crate::duration::DurationError> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    crate::duration::parse(text)
}

const POLL: Duration = Duration::from_millis(250);

/// Runs `hotconf rollback`.
pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    // A wrong kind is refused before any connection is made.
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    let cluster = connect(&args.cluster).await?;
    let target = Target {
        cluster: &cluster,
        object,
    };
    let object = target.get().await?;
    let status = object.status();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let Some(requested) = args.to else {
        let annotated = object
            .meta()
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(names::ROLLBACK_TO));
        if !annotated && status.rollback.is_none() {
            println!("{target}: no rollback is pinned");
            return Ok(ExitCode::SUCCESS);
        }
        target
            .patch(&json!({"metadata": {"annotations": {names::ROLLBACK_TO: null}}}))
            .await?;
        if args.timeout.is_zero() {
            println!("{target}: {} removed", names::ROLLBACK_TO);
            return Ok(ExitCode::SUCCESS);
        }
        let status = wait(&target, deadline, args.timeout, "release the pin", |s| {
            Ok(s.rollback.is_none())
        })
        .await?;
        println!(
            "{target}: rollback released; revision {} is projected",
            revision_text(status.current_revision)
        );
        return Ok(ExitCode::SUCCESS);
    };

    let expected = match parse_rollback(&requested) {
        RollbackRequest::Revision(n) => {
            if !status.history.iter().any(|s| s.revision == n) {
                bail!(
                    "revision {n} is not in the history of {target}; available: {}",
                    available(&status)
                );
            }
            Some(n)
        }
        RollbackRequest::Previous => {
            let previous = status
                .history
                .iter()
                .map(|s| s.revision)
                .filter(|r| status.latest_revision.is_some_and(|l| *r < l))
                .max();
            if previous.is_none() {
                bail!(
                    "{target} has no revision before its latest ({}) in history; available: {}",
                    revision_text(status.latest_revision),
                    available(&status)
                );
            }
            None
        }
        RollbackRequest::Invalid(text) => {
            bail!("--to takes a revision number or `previous`, not {text:?}")
        }
    };
    let requested = requested.trim().to_string();
    target
        .patch(&json!({"metadata": {"annotations": {names::ROLLBACK_TO: requested}}}))
        .await?;
    if args.timeout.is_zero() {
        println!("{target}: {}={requested} set", names::ROLLBACK_TO);
        return Ok(ExitCode::SUCCESS);
    }
    let missing_prefix = format!("{}={requested} ", names::ROLLBACK_TO);
    let status = wait(&target, deadline, args.timeout, "pin the revision", |s| {
        if let Some(c) = s.conditions.iter().find(|c| {
            c.type_ == "RolledBack"
                && c.reason == "RollbackTargetMissing"
                && c.message.starts_with(&missing_prefix)
        }) {
            return Err(anyhow!(
                "the operator reports RollbackTargetMissing for {target}: {}",
                c.message
            ));
        }
        Ok(s.rollback.as_ref().is_some_and(|r| {
            r.requested.trim() == requested
                && expected.is_none_or(|n| r.target_revision == n)
                && s.current_revision == Some(r.target_revision)
        }))
    })
    .await?;
    let pinned = status.current_revision;
    let latest = status.latest_revision;
    println!(
        "{target}: revision {} is pinned and projected (the spec's latest revision is {}); \
         `hotconf rollback {}/{} --clear` releases it",
        revision_text(pinned),
        revision_text(latest),
        target.object.kind.short(),
        target.object.name
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn revision_text(revision: Option<i64>) -> String {
    revision.map_or_else(|| "<none>".to_string(), |r| r.to_string())
}

/// Polls the object until `done` says yes (or fails), or the deadline passes.
pub(super) async fn wait(
    target: &Target<'_>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    what: &str,
    done: impl Fn(&ConfigStatus) -> anyhow::Result<bool>,
) -> anyhow::Result<ConfigStatus> {
    loop {
        let status = target.get().await?.status();
        if done(&status)? {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            let pin = status.rollback.as_ref().map_or_else(
                || "no rollback".to_string(),
                |r| format!("rollback to {}", r.target_revision),
            );
            bail!(
                "timed out after {}s waiting for the operator to {what} of {target} (status: \
                 current revision {}, {pin}); is the operator running?",
                timeout.as_secs(),
                revision_text(status.current_revision)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
