//! The run loop every service binary shares: serve gRPC and `/metrics`, report readiness, run
//! background tasks (relays, consumers), and on a shutdown signal report NOT_SERVING, stop
//! taking requests and drain within the grace period.
//!
//! Shutdown, in order: the token is cancelled (signal, or a background task failed); health
//! turns NOT_SERVING; the gRPC port stays open `shutdown_delay_ms`; the listener closes and
//! in-flight calls finish while the background tasks drain, both within `shutdown_grace_ms`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{config::ServerSettings, grpc, readiness::Readiness, shutdown, telemetry};

/// A built service, bound to its ports, not yet serving.
pub struct Application {
    name: &'static str,
    grpc_listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    metrics_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    routes: Routes,
    readiness: Readiness,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    grace: Duration,
    delay: Duration,
}

impl Application {
    /// Binds the gRPC and metrics ports (port 0 = any free port; tests read the real one back).
    /// `readiness` reports on the health service in `routes` (both from
    /// [`grpc::base_routes`]).
    pub async fn bind(
        name: &'static str,
        server: &ServerSettings,
        routes: Routes,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let ip: std::net::IpAddr = server
            .host
            .parse()
            .context("server.host is not an IP address")?;
        let (grpc_listener, grpc_addr) = grpc::bind(SocketAddr::new(ip, server.grpc_port)).await?;
        let (metrics_addr, metrics_task) =
            telemetry::serve_metrics(SocketAddr::new(ip, server.metrics_port), shutdown.clone())
                .await?;
        Ok(Self {
            name,
            grpc_listener,
            grpc_addr,
            metrics_addr,
            metrics_task,
            routes,
            readiness,
            tasks: JoinSet::new(),
            shutdown,
            grace: Duration::from_millis(server.shutdown_grace_ms),
            delay: Duration::from_millis(server.shutdown_delay_ms),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs `task` beside the server; it must return when the shutdown token is cancelled.
    pub fn spawn<F>(&mut self, task: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Serves until the shutdown token is cancelled, then drains background tasks.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        tracing::info!(
            service = self.name,
            grpc = %self.grpc_addr,
            metrics = %self.metrics_addr,
            "service started"
        );
        let shutdown = self.shutdown.clone();
        // The first round of probes is reported before the first call is answered (callers
        // meanwhile wait in the bound port's backlog), so no one sees a placeholder status.
        let readiness = self.readiness.start(shutdown.clone()).await;
        let stop_serving = CancellationToken::new();
        let server = grpc::serve(self.grpc_listener, self.routes, stop_serving.clone());
        tokio::pin!(server);
        // A background task that fails (or ends early) stops the whole service: better restarted
        // than half alive.
        let stop = tokio::select! {
            biased;
            () = shutdown.cancelled() => Stop::Asked,
            r = &mut server => Stop::ServerFailed(
                r.err().unwrap_or_else(|| anyhow::anyhow!("the gRPC server stopped before shutdown")),
            ),
            e = first_failure(&mut self.tasks, &shutdown) => Stop::TaskFailed(e),
        };
        shutdown.cancel();
        // Health is NOT_SERVING once this returns, before anything stops taking calls.
        let _ = readiness.await;
        let (served, server_ended) = match stop {
            Stop::Asked => {
                // Calls are still answered while balancers learn that this instance is going.
                tokio::time::sleep(self.delay).await;
                (Ok(()), false)
            }
            Stop::TaskFailed(e) => (Err(e), false),
            Stop::ServerFailed(e) => (Err(e), true),
        };
        stop_serving.cancel();
        let grace = self.grace;
        let in_flight = async {
            if server_ended {
                return Ok(());
            }
            tokio::time::timeout(grace, server)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!("gRPC calls still open after the grace period, closing them");
                    Ok(())
                })
        };
        let (stopped, drained) = tokio::join!(in_flight, shutdown::drain(self.tasks, grace));
        let _ = self.metrics_task.await;
        tracing::info!(service = self.name, "service stopped");
        served.and(stopped).and(drained)
    }
}

/// Why an application stops serving.
enum Stop {
    /// The shutdown token was cancelled (a signal, or the owner).
    Asked,
    ServerFailed(anyhow::Error),
    TaskFailed(anyhow::Error),
}

/// Returns when a background task fails, or ends although no shutdown was asked for; while the
/// tasks run (or end because shutdown began), never.
async fn first_failure(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Error {
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Err(e) => return e,
            Ok(()) if shutdown.is_cancelled() => {}
            Ok(()) => return anyhow::anyhow!("a background task ended before shutdown"),
        }
    }
    std::future::pending().await
}
