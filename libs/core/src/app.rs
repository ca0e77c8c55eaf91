//! The run loop every service binary shares: serve gRPC and `/metrics`, run background tasks
//! (relays, consumers), and on a shutdown signal stop taking requests and drain within the grace
//! period.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{config::ServerSettings, grpc, shutdown, telemetry};

/// A built service, bound to its ports, not yet serving.
pub struct Application {
    name: &'static str,
    grpc_listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    metrics_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    routes: Routes,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Application {
    /// Binds the gRPC and metrics ports (port 0 = any free port; tests read the real one back).
    pub async fn bind(
        name: &'static str,
        server: &ServerSettings,
        routes: Routes,
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
            tasks: JoinSet::new(),
            shutdown,
            grace: Duration::from_millis(server.shutdown_grace_ms),
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
        // A background task that fails (or ends early) stops the whole service: better restarted
        // than half alive. Tasks ending because shutdown began is the normal way out.
        let served = tokio::select! {
            r = grpc::serve(self.grpc_listener, self.routes, shutdown.clone()) => r,
            Some(joined) = self.tasks.join_next() => {
                match joined.map_err(anyhow::Error::from).and_then(|r| r) {
                    Err(e) => Err(e),
                    Ok(()) if shutdown.is_cancelled() => Ok(()),
                    Ok(()) => Err(anyhow::anyhow!("a background task ended before shutdown")),
                }
            }
        };
        shutdown.cancel();
        let drained = shutdown::drain(self.tasks, self.grace).await;
        let _ = self.metrics_task.await;
        tracing::info!(service = self.name, "service stopped");
        served.and(drained)
    }
}
