//! `hotconf history KIND/NAME`: the revisions in `.status.history` as a table, oldest first,
//! with a marker column: `current` (projected now), `pinned` (held by a rollback) and `latest`
//! (the spec's newest revision, shown only while something else is projected).

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::Output;
use super::cluster::{ClusterArgs, ObjectRef, Target, connect};
use crate::crd::{ConfigStatus, Snapshot};

/// Arguments of `hotconf history`.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// The object, `rtc/NAME` or `pb/NAME`.
    #[arg(value_name = "KIND/NAME")]
    pub object: String,
    /// `text`: a table; `json`: the snapshots as `.status.history` holds them (with documents).
    #[arg(
        short = 'o',
        long,
        value_enum,
        env = "HOTCONF_OUTPUT",
        default_value_t = Output::Text
    )]
    pub output: Output,
    /// How to reach the cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Changed keys listed in full up to this many; beyond, the rest is counted.
const MAX_KEYS_SHOWN: usize = 4;

/// Runs `hotconf history`.
pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    // A wrong kind is refused before any connection is made.
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    let cluster = connect(&args.cluster).await?;
    let target = Target {
        cluster: &cluster,
        object,
    };
    let status = target.get().await?.status();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status.history)?),
        Output::Text if status.history.is_empty() => {
            eprintln!(
                "{target} has no revisions yet (is the operator running, and is the spec valid?)"
            );
        }
        Output::Text => print!("{}", table(&status, Utc::now())),
    }
    Ok(ExitCode::SUCCESS)
}

/// The history table, oldest revision first.
pub fn table(status: &ConfigStatus, now: DateTime<Utc>) -> String {
    let mut history: Vec<&Snapshot> = status.history.iter().collect();
    history.sort_by_key(|s| s.revision);
    let mut rows = vec![
        [
            "REVISION",
            "AGE",
            "CHANGED-BY",
            "REASON",
            "CHANGED-KEYS",
            "APPLIED",
            "MARK",
        ]
        .map(String::from),
    ];
    for snap in history {
        rows.push([
            snap.revision.to_string(),
            DateTime::parse_from_rfc3339(&snap.created_at)
                .map(|t| age(now - t.with_timezone(&Utc)))
                .unwrap_or_else(|_| "<unknown>".into()),
            snap.changed_by
                .clone()
                .unwrap_or_else(|| "<unknown>".into()),
            snap.reason.clone().unwrap_or_else(|| "<none>".into()),
            keys(&snap.changed_keys),
            applied(snap),
            marks(status, snap.revision),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// How many consumer pods applied the revision (spec.rollout.consumerSelector), `-` untracked.
fn applied(snap: &Snapshot) -> String {
    match snap.applied_by {
        Some(n) if snap.applied_by_all => format!("{n} (all)"),
        Some(n) => n.to_string(),
        None => "-".into(),
    }
}

fn keys(changed: &[String]) -> String {
    if changed.is_empty() {
        return "<none>".into();
    }
    if changed.len() <= MAX_KEYS_SHOWN {
        return changed.join(",");
    }
    format!(
        "{} (+{} more)",
        changed[..MAX_KEYS_SHOWN - 1].join(","),
        changed.len() - (MAX_KEYS_SHOWN - 1)
    )
}

fn marks(status: &ConfigStatus, revision: i64) -> String {
    let pinned = status.rollback.as_ref().map(|r| r.target_revision);
    let mut marks = Vec::new();
    if status.current_revision == Some(revision) {
        marks.push("current");
    }
    if pinned == Some(revision) {
        marks.push("pinned");
    }
    if status.latest_revision == Some(revision) && status.current_revision != Some(revision) {
        marks.push("latest");
    }
    marks.join(",")
}

/// A duration as kubectl's AGE column writes it (`45s`, `3m20s`, `5h`, `12d`).
pub fn age(elapsed: chrono::Duration) -> String {
    let s = elapsed.num_seconds().max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RollbackStatus;

    fn snap(revision: i64, reason: &str, keys: &[&str]) -> Snapshot {
        Snapshot {
            revision,
            hash: format!("h{revision}"),
            created_at: format!("2026-01-01T00:0{revision}:00Z"),
            generation: revision,
            reason: Some(reason.into()),
            changed_by: Some("kubectl".into()),
            changed_keys: keys.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_marks_current_pinned_and_latest() {
        let status = ConfigStatus {
            history: vec![
                snap(3, "third", &["values.a"]),
                snap(
                    1,
                    "first",
                    &["values.a", "values.b", "values.c", "values.d", "values.e"],
                ),
                snap(2, "second", &[]),
            ],
            current_revision: Some(2),
            latest_revision: Some(3),
            rollback: Some(RollbackStatus {
                target_revision: 2,
                pinned_generation: 3,
                requested: "2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = table(&status, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("REVISION   AGE   CHANGED-BY   REASON"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("1 ") && lines[1].contains("9m"),
            "{text}"
        );
        assert!(
            lines[1].contains("values.a,values.b,values.c (+2 more)"),
            "{text}"
        );
        assert!(
            lines[2].contains("second") && lines[2].ends_with("current,pinned"),
            "{text}"
        );
        assert!(lines[2].contains("<none>"), "{text}");
        assert!(lines[3].ends_with("latest"), "{text}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(age(d(45)), "45s");
        assert_eq!(age(d(200)), "3m20s");
        assert_eq!(age(d(3600)), "60m");
        assert_eq!(age(d(5 * 3600)), "5h");
        assert_eq!(age(d(5 * 3600 + 120)), "5h2m");
        assert_eq!(age(d(3 * 86400 + 3600)), "3d1h");
        assert_eq!(age(d(30 * 86400)), "30d");
    }
}
