//! Graceful shutdown: a signal cancels one token; every task watches it and drains.
//!
//! `main` calls [`on_signal`] once; the token is cloned into the gRPC server, relays and
//! consumers. Each stops taking new work when it is cancelled and finishes what it holds;
//! [`drain`] bounds how long the process waits for them.

use std::time::Duration;

use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Waits for every task to end, at most `grace`; tasks still running then are aborted.
/// Returns the first error a task ended with.
pub async fn drain(mut tasks: JoinSet<anyhow::Result<()>>, grace: Duration) -> anyhow::Result<()> {
    let mut first_error = None;
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = ?e, "task failed");
                first_error.get_or_insert(e);
            }
        }
    };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "tasks still running after grace period, aborting them"
        );
    }
    first_error.map_or(Ok(()), Err)
}
