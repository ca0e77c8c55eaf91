//! Layered configuration.
//!
//! A service describes its settings as one `serde` struct. [`load`] layers:
//!
//! 1. the service's defaults (so it runs with no configuration at all on the local stack),
//! 2. a TOML file, if `SHOP_CONFIG` names one,
//! 3. environment variables `SHOP__SECTION__KEY` (double underscore between levels), e.g.
//!    `SHOP__DATABASE__URL=postgres://...` or `SHOP__KAFKA__BROKERS=kafka:9092`.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Loads `T` from `defaults`, the optional `SHOP_CONFIG` file and `SHOP__*` environment variables.
pub fn load<T>(defaults: &T) -> Result<T, config::ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    load_from(
        defaults,
        std::env::var("SHOP_CONFIG").ok().as_deref(),
        "SHOP",
    )
}

/// As [`load`], with an explicit file and environment prefix (tests use their own prefix).
pub fn load_from<T>(
    defaults: &T,
    file: Option<&str>,
    env_prefix: &str,
) -> Result<T, config::ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut builder = config::Config::builder().add_source(config::Config::try_from(defaults)?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::with_name(file).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
}

/// Where a service listens. Port 0 picks a free port (tests do this).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    pub host: String,
    pub grpc_port: u16,
    pub metrics_port: u16,
    /// Longest time in-flight work gets to finish after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// After a shutdown signal, how long the gRPC port stays open (health NOT_SERVING, calls
    /// still answered) before it closes, for balancers that only learn from health checks.
    /// 0 on Kubernetes, where the pod's preStop sleep does this.
    pub shutdown_delay_ms: u64,
    /// How often the readiness probes run (`shop_core::readiness`).
    pub readiness_interval_ms: u64,
    /// How long one readiness probe may take before its dependency counts as down.
    pub readiness_timeout_ms: u64,
}

impl ServerSettings {
    /// The defaults, on these ports (a service's local-stack ports).
    pub fn on_ports(grpc_port: u16, metrics_port: u16) -> Self {
        Self {
            grpc_port,
            metrics_port,
            ..Self::default()
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            grpc_port: 0,
            metrics_port: 0,
            shutdown_grace_ms: 10_000,
            shutdown_delay_ms: 0,
            readiness_interval_ms: 1_000,
            readiness_timeout_ms: 1_000,
        }
    }
}

/// Logging and tracing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// `json` (the default, one object per line) or `pretty`.
    pub log_format: String,
    /// `RUST_LOG`-style filter used when `RUST_LOG` is unset.
    pub log_filter: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`; empty = no span export.
    /// Needs the `otlp` cargo feature of shop-core.
    pub otlp_endpoint: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: "json".into(),
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

/// A PostgreSQL database owned by one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// Create the database if it does not exist (local stack, tests). Off where a DBA owns it.
    pub create_if_missing: bool,
    /// Whether this pool's transactions fire the `NOTIFY` triggers (outbox, event store). Off:
    /// the service wakes its relay and projection in-process (`shop_messaging::wake`), and its
    /// commits do not queue on PostgreSQL's cluster-wide notify lock.
    pub notify: bool,
    /// Ping every connection before handing it out (one more round trip per acquire). Off: a
    /// dead connection fails its first statement instead, which callers retry.
    pub test_before_acquire: bool,
}

impl DatabaseSettings {
    /// Settings for a database named `name` on the local stack's server.
    pub fn local(name: &str) -> Self {
        Self {
            url: format!("postgres://shop:shop@127.0.0.1:5432/{name}"),
            max_connections: 16,
            create_if_missing: true,
            notify: false,
            test_before_acquire: false,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self::local("shop")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Settings {
        server: ServerSettings,
        database: DatabaseSettings,
    }

    #[test]
    fn environment_overrides_defaults_per_nested_key() {
        // A prefix no other test uses, so parallel tests cannot interfere.
        let settings: Settings = temp_env(
            &[
                ("CFGTEST__SERVER__GRPC_PORT", "5101"),
                ("CFGTEST__DATABASE__URL", "postgres://x@h/db"),
            ],
            || load_from(&Settings::default(), None, "CFGTEST").expect("config loads"),
        );
        assert_eq!(settings.server.grpc_port, 5101);
        assert_eq!(
            settings.server.host, "127.0.0.1",
            "untouched keys keep their default"
        );
        assert_eq!(settings.database.url, "postgres://x@h/db");
        assert_eq!(settings.database.max_connections, 16);
    }

    fn temp_env<R>(vars: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
        // Environment mutation is process-global; serialise the tests that do it.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in vars {
            #[allow(unsafe_code)]
            // SAFETY: guarded by LOCK; no other code reads these CFGTEST__ variables.
            unsafe {
                std::env::set_var(k, v)
            };
        }
        let out = f();
        for (k, _) in vars {
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                std::env::remove_var(k)
            };
        }
        out
    }
}

/// A Redis server (`SHOP__REDIS__URL`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    pub url: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
        }
    }
}
