//! Readiness: gRPC health that says whether this instance can do its work right now.
//!
//! A service lists the gRPC services it serves ([`Readiness::serves`]) and what they depend on,
//! as probes ([`Readiness::probe`]: its database, the broker, its other stores). The
//! [`Application`](crate::app::Application) runs every probe once before it answers its first
//! call, then every `readiness_interval_ms`, all at once, each within `readiness_timeout_ms` (a
//! store that hangs counts as down). The overall status (`""`) and each listed service are
//! SERVING only while every probe passes, NOT_SERVING otherwise, and NOT_SERVING from the
//! moment shutdown begins (before the drain). Each dependency is also the gauge
//! `ready{dependency}` (1 up, 0 down).
//!
//! [`LIVENESS`] is a health service of its own that stays SERVING while the process serves:
//! liveness (and startup) probes ask for it, so a store outage takes pods out of rotation and
//! never restarts them.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::{BoxFuture, join_all};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::config::ServerSettings;

/// The health service liveness probes check: SERVING while the process answers at all.
pub const LIVENESS: &str = "liveness";

type Check = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

struct Probe {
    dependency: &'static str,
    check: Check,
    /// The last round's outcome (None before the first), to log only changes.
    up: Option<bool>,
}

/// What this instance's readiness depends on, and where it is reported.
pub struct Readiness {
    health: HealthReporter,
    services: Vec<&'static str>,
    probes: Vec<Probe>,
    interval: Duration,
    timeout: Duration,
    ready: Option<bool>,
}

impl Readiness {
    /// Reports on `health` (from [`crate::grpc::base_routes`]), polling as `server` says.
    pub fn new(health: HealthReporter, server: &ServerSettings) -> Self {
        Self {
            health,
            services: Vec::new(),
            probes: Vec::new(),
            interval: Duration::from_millis(server.readiness_interval_ms.max(10)),
            timeout: Duration::from_millis(server.readiness_timeout_ms.max(10)),
            ready: None,
        }
    }

    /// How long one probe may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reports the gRPC service `S` (by its full name) along with the overall status.
    pub fn serves<S: NamedService>(&mut self) -> &mut Self {
        self.services.push(S::NAME);
        self
    }

    /// Adds a dependency: ready only while `check` succeeds within the timeout.
    pub fn probe<F, Fut>(&mut self, dependency: &'static str, check: F) -> &mut Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.probes.push(Probe {
            dependency,
            check: Arc::new(move || Box::pin(check())),
            up: None,
        });
        self
    }

    /// PostgreSQL (`postgres`): `SELECT 1` on a connection of its own to `pool`'s database, not
    /// one from the pool, so a pool busy under load is not mistaken for an outage. A connection
    /// that failed (or timed out mid-query) is dropped and the next round connects afresh.
    pub fn postgres(&mut self, pool: &PgPool) -> &mut Self {
        let options = pool.connect_options();
        let slot: Arc<Mutex<Option<PgConnection>>> = Arc::default();
        self.probe("postgres", move || {
            let (options, slot) = (options.clone(), slot.clone());
            async move {
                let held = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                let mut conn = match held {
                    Some(conn) => conn,
                    None => PgConnection::connect_with(&options).await?,
                };
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                Ok(())
            }
        })
    }

    /// Marks [`LIVENESS`] SERVING, runs the first round and reports it, then polls in the
    /// background. On shutdown the returned task reports NOT_SERVING and ends.
    pub async fn start(mut self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let ready = self.round().await;
        self.report(ready).await;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.interval) => {}
                }
                let ready = tokio::select! {
                    () = shutdown.cancelled() => break,
                    ready = self.round() => ready,
                };
                self.report(ready).await;
            }
            tracing::info!("shutting down: health NOT_SERVING");
            self.report(false).await;
        })
    }

    /// Runs every probe at once, each within the timeout; true when all passed.
    async fn round(&mut self) -> bool {
        let timeout = self.timeout;
        let outcomes = join_all(self.probes.iter().map(|p| {
            let check = p.check.clone();
            async move {
                match tokio::time::timeout(timeout, check()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
                }
            }
        }))
        .await;
        let mut all = true;
        for (probe, outcome) in self.probes.iter_mut().zip(outcomes) {
            let up = outcome.is_ok();
            metrics::gauge!("ready", "dependency" => probe.dependency).set(f64::from(u8::from(up)));
            match (&outcome, probe.up) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(dependency = probe.dependency, error = %format!("{e:#}"), "dependency down");
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(dependency = probe.dependency, "dependency up again");
                }
                _ => {}
            }
            probe.up = Some(up);
            all &= up;
        }
        all
    }

    /// Sets the overall status and every listed service's, when it changed.
    async fn report(&mut self, ready: bool) {
        if self.ready == Some(ready) {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.health.set_service_status(service, status).await;
        }
        tracing::info!(ready, "readiness changed");
        self.ready = Some(ready);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use tonic_health::{
        pb::{
            HealthCheckRequest, health_check_response::ServingStatus as Wire, health_server::Health,
        },
        server::HealthService,
    };

    use super::*;

    const UP: u8 = 0;
    const DOWN: u8 = 1;
    const HUNG: u8 = 2;

    fn settings() -> ServerSettings {
        ServerSettings {
            readiness_interval_ms: 20,
            readiness_timeout_ms: 100,
            ..ServerSettings::default()
        }
    }

    async fn status(health: &HealthService, service: &str) -> Wire {
        health
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.into(),
            }))
            .await
            .map_or(Wire::ServiceUnknown, |r| r.into_inner().status())
    }

    async fn eventually_status(health: &HealthService, want: Wire) -> Wire {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = status(health, "").await;
            if got == want || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn gauge(dependency: &str) -> Option<String> {
        let text = crate::telemetry::prometheus().render();
        let prefix = format!("ready{{dependency=\"{dependency}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }

    #[tokio::test]
    async fn serving_only_while_every_probe_passes_a_hung_one_counts_as_down_and_shutdown_turns_it_off()
     {
        let _ = crate::telemetry::prometheus();
        let (reporter, _server) = tonic_health::server::health_reporter();
        let health = HealthService::from_health_reporter(reporter.clone());
        let state = Arc::new(AtomicU8::new(UP));
        let mut readiness = Readiness::new(reporter, &settings());
        let probe_state = state.clone();
        readiness
            .probe("unit-test-store", move || {
                let state = probe_state.load(Ordering::SeqCst);
                async move {
                    match state {
                        UP => Ok(()),
                        DOWN => anyhow::bail!("refused"),
                        _ => std::future::pending().await,
                    }
                }
            })
            .probe("unit-test-broker", || async { Ok(()) });
        let shutdown = CancellationToken::new();
        let task = readiness.start(shutdown.clone()).await;

        // Reported before start returns: nothing answers with a placeholder status.
        assert_eq!(status(&health, "").await, Wire::Serving);
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        assert_eq!(gauge("unit-test-store").as_deref(), Some("1"));

        state.store(DOWN, Ordering::SeqCst);
        assert_eq!(
            eventually_status(&health, Wire::NotServing).await,
            Wire::NotServing
        );
        assert_eq!(gauge("unit-test-store").as_deref(), Some("0"));
        assert_eq!(gauge("unit-test-broker").as_deref(), Some("1"));
        assert_eq!(
            status(&health, LIVENESS).await,
            Wire::Serving,
            "liveness is not readiness"
        );

        state.store(UP, Ordering::SeqCst);
        assert_eq!(
            eventually_status(&health, Wire::Serving).await,
            Wire::Serving
        );

        state.store(HUNG, Ordering::SeqCst);
        assert_eq!(
            eventually_status(&health, Wire::NotServing).await,
            Wire::NotServing
        );
        state.store(UP, Ordering::SeqCst);
        assert_eq!(
            eventually_status(&health, Wire::Serving).await,
            Wire::Serving
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the watcher ends at once on shutdown")
            .expect("join");
        assert_eq!(status(&health, "").await, Wire::NotServing);
    }
}
