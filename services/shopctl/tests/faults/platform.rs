//! The whole platform as real processes (the seven service binaries), with databases, topic
//! prefix, Mongo database, search index and ClickHouse database of its own, on free ports and a
//! private Kafka broker, so the fault matrix can SIGKILL any part of it and start it again.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use shop_messaging::testing::{PrivateBroker, free_port};
use tokio::process::{Child, Command};

pub const SERVICES: &[&str] = &[
    "order",
    "payment",
    "inventory",
    "shipping",
    "catalog",
    "cart",
    "analytics",
];
/// The services with an outbox relay (each has the exit-after-publish hook of the one loop).
pub const RELAY_SERVICES: &[&str] = &[
    "order",
    "payment",
    "inventory",
    "shipping",
    "cart",
    "catalog",
];
/// Each PostgreSQL service's consumer groups (= its inboxes' names), without the run's prefix:
/// the command consumer and, for the participants, the one that reacts to the others' events
/// in a choreographed order.
pub const PG_GROUPS: &[(&str, &[&str])] = &[
    ("order", &["order-saga"]),
    ("payment", &["payment", "payment-choreography"]),
    ("inventory", &["inventory", "inventory-choreography"]),
    ("shipping", &["shipping", "shipping-choreography"]),
];
pub const PG_URL: &str = "postgres://shop:shop@127.0.0.1:5432/postgres";

pub struct Platform {
    /// Prefix of everything this platform owns (databases, topics, index).
    pub run: String,
    /// Its Kafka topic and consumer-group prefix, with the dot (`<run>.` unless
    /// [`Options::topics`] said otherwise).
    pub topics: String,
    pub broker: PrivateBroker,
    grpc: BTreeMap<&'static str, u16>,
    env: BTreeMap<&'static str, Vec<(String, String)>>,
    children: BTreeMap<&'static str, Child>,
    bin: PathBuf,
    logs: PathBuf,
}

/// The directory of the workspace's binaries (shopctl's own test binary sits in `deps/`).
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shopctl"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// How [`Platform::start_with`] names what the platform owns.
#[derive(Default)]
pub struct Options<'a> {
    /// The prefix of its databases (`<run>_<service>`; ones that exist are used as they are, a
    /// restored copy say), Mongo database, search index and ClickHouse database. Default: new.
    pub run: Option<String>,
    /// Its topic and consumer-group prefix, without the dot. Default: `run`.
    pub topics: Option<String>,
    /// Settings (or fault hooks) per service.
    pub extra: &'a [(&'static str, &'a str, &'a str)],
}

impl Platform {
    /// Starts every service; `extra` adds settings (or fault hooks) per service.
    pub async fn start(extra: &[(&'static str, &str, &str)]) -> Self {
        Self::start_with(Options {
            extra,
            ..Options::default()
        })
        .await
    }

    /// Starts every service, on a private broker of its own, named as `options` say.
    pub async fn start_with(options: Options<'_>) -> Self {
        let Options { run, topics, extra } = options;
        let run =
            run.unwrap_or_else(|| format!("f{}", &uuid::Uuid::now_v7().simple().to_string()[20..]));
        let topics = format!("{}.", topics.as_deref().unwrap_or(&run));
        let broker = PrivateBroker::start().await;
        let logs = std::env::temp_dir().join(format!("shop-faults-{run}"));
        std::fs::create_dir_all(&logs).expect("log dir");
        let grpc: BTreeMap<&'static str, u16> =
            SERVICES.iter().map(|s| (*s, free_port())).collect();
        let mut env = BTreeMap::new();
        for s in SERVICES {
            let mut e = vec![
                ("SHOP__SERVER__GRPC_PORT".into(), grpc[s].to_string()),
                ("SHOP__SERVER__METRICS_PORT".into(), free_port().to_string()),
                (
                    "SHOP__KAFKA__BROKERS".into(),
                    format!("127.0.0.1:{}", broker.port),
                ),
                ("SHOP__KAFKA__TOPIC_PREFIX".into(), topics.clone()),
                (
                    "SHOP__DATABASE__URL".into(),
                    format!("postgres://shop:shop@127.0.0.1:5432/{run}_{s}"),
                ),
                ("SHOP__MONGO__DATABASE".into(), format!("{run}_catalog")),
                ("SHOP__SEARCH__INDEX".into(), format!("{run}-products")),
                (
                    "SHOP__CLICKHOUSE__DATABASE".into(),
                    format!("{run}_analytics"),
                ),
                (
                    "SHOP__CATALOG_URL".into(),
                    format!("http://127.0.0.1:{}", grpc["catalog"]),
                ),
                (
                    "SHOP__ORDER_URL".into(),
                    format!("http://127.0.0.1:{}", grpc["order"]),
                ),
                // Two-phase commit's participants: this platform's, not the native stack's.
                (
                    "SHOP__INVENTORY_URL".into(),
                    format!("http://127.0.0.1:{}", grpc["inventory"]),
                ),
                (
                    "SHOP__PAYMENT_URL".into(),
                    format!("http://127.0.0.1:{}", grpc["payment"]),
                ),
                (
                    "SHOP__SHIPPING_URL".into(),
                    format!("http://127.0.0.1:{}", grpc["shipping"]),
                ),
                // Quick saga timeouts: the faults' retries and compensations run in seconds.
                ("SHOP__SAGA__SHIP_TIMEOUT_MS".into(), "3000".into()),
                ("RUST_LOG".into(), "info".into()),
            ];
            for (svc, k, v) in extra {
                if svc == s {
                    e.push(((*k).to_owned(), (*v).to_owned()));
                }
            }
            env.insert(*s, e);
        }
        let mut p = Self {
            run,
            topics,
            broker,
            grpc,
            env,
            children: BTreeMap::new(),
            bin: bin_dir(),
            logs,
        };
        for s in SERVICES {
            p.spawn(s);
        }
        for s in SERVICES {
            p.wait_listening(s).await;
        }
        p
    }

    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.grpc[service])
    }

    fn spawn(&mut self, service: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{service}.log")))
            .expect("log file");
        let child = Command::new(self.bin.join(format!("shop-{service}")))
            .envs(self.env[service].iter().cloned())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start shop-{service} from {} ({e}); `cargo build --workspace` builds it",
                    self.bin.display()
                )
            });
        // Where `shopctl compare` finds the processes it pauses and kills.
        let run = self.logs.join("run");
        std::fs::create_dir_all(&run).expect("pid dir");
        let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
        std::fs::write(run.join(format!("{service}.pid")), pid).expect("pid file");
        self.children.insert(service, child);
    }

    /// The directory with `run/<service>.pid` (as the native stack's `.stack`).
    pub fn stack_dir(&self) -> &std::path::Path {
        &self.logs
    }

    /// `shopctl <args>` against this platform (its services, databases and topics), its output.
    pub fn shopctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("shopctl"));
        c.args(args)
            .env("SHOP__KAFKA__TOPIC_PREFIX", &self.topics)
            .env("SHOP_KAFKA", format!("127.0.0.1:{}", self.broker.port))
            .env("SHOP_DB_PREFIX", format!("{}_", self.run))
            .env("SHOP_PG_URL", PG_URL);
        for s in SERVICES {
            c.env(format!("SHOP_{}", s.to_uppercase()), self.url(s));
        }
        c
    }

    async fn wait_listening(&mut self, service: &'static str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = format!("127.0.0.1:{}", self.grpc[service]);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            let exited = self
                .children
                .get_mut(service)
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{service} did not start ({exited:?}); its log: {}",
                self.logs.join(format!("{service}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The private broker's settings, with this platform's topic prefix.
    pub fn kafka(&self) -> shop_messaging::kafka::KafkaSettings {
        shop_messaging::kafka::KafkaSettings {
            topic_prefix: self.topics.clone(),
            client_id: "fault-matrix".into(),
            ..self.broker.settings()
        }
    }

    /// SIGTERM, and wait: the service drains and its consumers leave their groups.
    pub async fn terminate(&mut self, service: &'static str) {
        if let Some(mut child) = self.children.remove(service) {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self, service: &'static str) {
        if let Some(mut child) = self.children.remove(service) {
            let _ = child.kill().await;
        }
    }

    /// Waits for a service to end by itself (a fault hook that exits), up to `within`.
    pub async fn exited(&mut self, service: &'static str, within: Duration) -> bool {
        let Some(child) = self.children.get_mut(service) else {
            return true;
        };
        let ended = tokio::time::timeout(within, child.wait()).await.is_ok();
        if ended {
            self.children.remove(service);
        }
        ended
    }

    /// Starts `service` again (SIGKILLing it first if it runs), with `changes` to its settings
    /// (a removed hook: value "").
    pub async fn restart(&mut self, service: &'static str, changes: &[(&str, &str)]) {
        self.kill(service).await;
        let env = self.env.get_mut(service).expect("service");
        for (k, v) in changes {
            env.retain(|(key, _)| key != k);
            if !v.is_empty() {
                env.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        self.spawn(service);
        self.wait_listening(service).await;
    }

    /// `shopctl check` on this platform's stores for `tenant`: (passed, its JSON report).
    pub async fn check(&self, tenant: &str) -> (bool, serde_json::Value) {
        self.check_with(tenant, &[]).await
    }

    /// [`Platform::check`] with more arguments (`--core-only`, say).
    pub async fn check_with(&self, tenant: &str, more: &[&str]) -> (bool, serde_json::Value) {
        let out = self
            .shopctl(&[
                "check",
                "--json",
                "--confirm-after",
                "3",
                "--tenant",
                tenant,
            ])
            .args(more)
            .args(["--catalog-database", &format!("{}_catalog", self.run)])
            .args(["--search-index", &format!("{}-products", self.run)])
            .args(["--analytics-database", &format!("{}_analytics", self.run)])
            .args(["--topic-prefix", &self.topics])
            .output()
            .await
            .expect("run shopctl check");
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            serde_json::json!({
                "error": String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>()
            })
        });
        (out.status.success(), report)
    }

    /// Stops every service and drops what the platform created.
    pub async fn stop(mut self) {
        for s in SERVICES {
            self.kill(s).await;
        }
        let pool = sqlx::PgPool::connect(PG_URL).await.expect("postgres");
        for s in ["order", "payment", "inventory", "shipping"] {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {}_{s} WITH (FORCE)",
                self.run
            ))
            .execute(&pool)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}
