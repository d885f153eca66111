//! Process shutdown: the one signal every long-running subcommand (operator, agent, dev) stops
//! on.

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C. Should the SIGTERM handler fail to
/// install, Ctrl-C still works and a warning says why.
pub async fn signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
