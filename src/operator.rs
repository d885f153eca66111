//! `hotconf operator`: connects to the cluster, serves the admin endpoints, takes part in
//! leader election, and runs the controllers until SIGTERM or Ctrl-C. On shutdown the
//! controllers stop first, then the Lease is released, so a successor takes over at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;

use crate::controller::{self, Runtime, Scope};
use crate::health::{Bounds, Health, HealthArgs};
use crate::leader::{Election, LeaderArgs};
use crate::metrics::OperatorMetrics;

/// Arguments of `hotconf operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespaces to watch (comma-separated or repeated); all namespaces when empty.
    #[arg(long, env = "HOTCONF_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "HOTCONF_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Watch pods for `spec.rollout.consumerSelector` (consumer status and health-gated
    /// rollback; needs list/watch on pods). `false` ignores consumer selectors.
    #[arg(long, env = "HOTCONF_CONSUMERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub consumers: bool,
    /// The bounds `/readyz` and `/healthz` judge by.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// The admission webhook.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// Runs the operator with the usual kubeconfig resolution (in-cluster, `$KUBECONFIG`,
/// `~/.kube/config`).
pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (kubeconfig or in-cluster config)")?;
    let shard = match &args.leader.controller_ring {
        Some(ring) => Some(
            crate::sharding::Shard::new(ring, &args.leader.identity())
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let scope = Scope {
        shard: shard.clone(),
        namespaces: args
            .namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        consumers: args.consumers,
    };
    controller::check_crds(&client).await?;

    let mut registry = Registry::with_prefix("hotconf");
    let metrics = Arc::new(OperatorMetrics::register(&mut registry));
    let registry = Arc::new(registry);
    let bounds = Bounds::from(&args.health);
    tracing::info!(?bounds, "health bounds");
    let health = Arc::new(Health::new(bounds, Some(metrics.clone())));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let listener = crate::admin::bind(args.admin_addr).await?;
    let admin = tokio::spawn(crate::admin::serve(
        listener,
        registry.clone(),
        health.clone(),
        stopped(&stop_tx),
    ));
    let election = match (&shard, args.leader.leader_elect) {
        (Some(shard), _) => {
            tracing::info!(ring = %shard.ring, shard = %shard.name, selector = %shard.selector(), "running as a shard");
            Election::start_shard(client.clone(), &args.leader, shard)
        }
        (None, true) => Election::start(client.clone(), &args.leader),
        (None, false) => Election::solo(),
    };
    let gauge = {
        let mut leading = election.is_leader.clone();
        let metrics = metrics.clone();
        let stop = stopped(&stop_tx);
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let now = *leading.borrow_and_update();
                metrics.leader.set(i64::from(now));
                tokio::select! {
                    _ = &mut stop => break,
                    changed = leading.changed() => if changed.is_err() { break },
                }
            }
        })
    };

    // Every replica serves the webhook: admission does not write, so it needs no Lease.
    // The webhook learns the attribution key; the controllers verify changed-by with it.
    let attribution = Arc::new(crate::webhook::attribution::Keys::default());
    let webhook = if args.webhook.webhook {
        let webhook = crate::webhook::run(
            client.clone(),
            args.webhook.clone(),
            metrics.clone(),
            attribution.clone(),
            stopped(&stop_tx),
        );
        Some(tokio::spawn(async move {
            let result = webhook.await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "the admission webhook stopped");
            }
            result
        }))
    } else {
        None
    };

    let runtime = Runtime {
        metrics,
        is_leader: election.is_leader.clone(),
        health,
        attribution,
    };
    let result = controller::run(client, scope, runtime, crate::shutdown::signal()).await;
    // The controllers have stopped: a successor may take over now.
    election.release().await;
    let _ = stop_tx.send(());
    let _ = gauge.await;
    if let Some(webhook) = webhook {
        match webhook.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admission webhook failed"),
            Err(e) => tracing::warn!(error = %e, "admission webhook task failed"),
            Ok(Ok(())) => {}
        }
    }
    match admin.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server failed"),
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
        Ok(Ok(())) => {}
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
