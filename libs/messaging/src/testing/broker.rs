//! A private Apache Kafka broker for fault tests (feature `testing`).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{ClientConfig, consumer::Consumer as _};

use crate::kafka::KafkaSettings;

/// An Apache Kafka broker of this test's own (KRaft, one node, in a scratch directory), on free
/// ports, that the test can SIGKILL and restart on the same data. It runs the jars the native
/// stack fetched (`infra/local/stack.sh up kafka` links them at `.stack/kafka/libs`;
/// `SHOP_KAFKA_LIBS` overrides).
pub struct PrivateBroker {
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl PrivateBroker {
    fn libs() -> PathBuf {
        std::env::var_os("SHOP_KAFKA_LIBS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
                std::env::var_os("SHOP_STACK_DIR")
                    .map(PathBuf::from)
                    .unwrap_or(repo.join(".stack"))
                    .join("kafka/libs")
            })
    }

    fn java(&self, main: &str) -> Command {
        let mut cmd = Command::new("java");
        cmd.args(["-Xms256m", "-Xmx384m", "-XX:+UseSerialGC"])
            .arg("-cp")
            .arg(format!("{}/*", Self::libs().display()))
            .arg(main)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    pub async fn start() -> Self {
        let (port, controller_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "kafka-test-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let properties = format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={}/data\n\
             offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n",
            dir.display()
        );
        std::fs::write(dir.join("server.properties"), properties).expect("broker config");
        let broker = Self {
            port,
            controller_port,
            dir,
            child: None,
        };
        // A cluster id is 16 bytes in URL-safe base64 without padding (what `random-uuid` prints).
        // (One starting with '-' would be read as an option by the storage tool.)
        let cluster_id = loop {
            let id = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                uuid::Uuid::new_v4().as_bytes(),
            );
            if !id.starts_with('-') {
                break id;
            }
        };
        let formatted = broker
            .java("kafka.tools.StorageTool")
            .args(["format", "--standalone", "-t", &cluster_id])
            .args(["-c", "server.properties"])
            .status()
            .expect("run kafka.tools.StorageTool (infra/local/stack.sh up kafka fetches it)");
        assert!(formatted.success(), "private broker storage format failed");
        let mut broker = broker;
        broker.restart().await;
        broker
    }

    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: format!("127.0.0.1:{}", self.port),
            client_id: "messaging-tests".into(),
            ..KafkaSettings::default()
        }
    }

    /// Starts the broker on the same ports and data (after [`PrivateBroker::kill`]) and waits
    /// until it answers a metadata request with itself in it.
    pub async fn restart(&mut self) {
        let child = self
            .java("kafka.Kafka")
            .arg("server.properties")
            .spawn()
            .expect("start kafka.Kafka");
        self.child = Some(child);
        let settings = self.settings();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let settings = settings.clone();
            let up = tokio::task::spawn_blocking(move || {
                let client: rdkafka::consumer::BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &settings.brokers)
                    .create()
                    .expect("metadata client");
                client
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|m| !m.brokers().is_empty())
            })
            .await
            .expect("metadata probe");
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "private broker on {} (controller {}) did not start",
                self.port,
                self.controller_port
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL: no goodbye to the clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
