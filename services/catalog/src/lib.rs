//! # shop-catalog
//!
//! Products, product search and recommendations; eventually consistent, read-your-writes for the
//! writer (seed 003).
//!
//! - [`domain`]: a product, validated (price in minor units).
//! - [`store`]: products in MongoDB with versioned updates and the outbox inside each document
//!   (one atomic single-document write), and the relay that publishes it to Kafka.
//! - [`search`]: the search interface and its two backends, tantivy (embedded, the default here)
//!   and Elasticsearch.
//! - [`recommend`]: "bought together" scores in Redis, counted once per order.
//! - [`feed`]: the consumers that keep search and recommendations up to date from events.
//! - [`grpc`]: create / update (optimistic on `expected_version`) / get, search, recommendations.
//! - [`build`]: the service, assembled; ready (gRPC health) while MongoDB, Redis, the search
//!   server (the `elasticsearch` backend) and Kafka answer.

pub mod domain;
pub mod feed;
pub mod grpc;
pub mod recommend;
pub mod search;
pub mod store;

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use shop_core::{
    config::{RedisSettings, ServerSettings, TelemetrySettings},
    readiness::Readiness,
};
use shop_messaging::{kafka::KafkaSettings, topics};
use shop_proto::catalog::catalog_service_server::CatalogServiceServer;
use tokio_util::sync::CancellationToken;

/// `SHOP__MONGO__URL`, `SHOP__MONGO__DATABASE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MongoSettings {
    pub url: String,
    pub database: String,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            url: "mongodb://127.0.0.1:27017".into(),
            database: "shop_catalog".into(),
        }
    }
}

/// Which search backend serves queries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchSettings {
    /// `elasticsearch` (the Elasticsearch API: OpenSearch on the native stack and in compose),
    /// or `embedded` (tantivy, in this process: the option without a JVM).
    pub backend: String,
    /// The embedded index's directory; empty keeps it in memory (rebuilt from the topics).
    pub dir: String,
    /// The search server's URL (`SHOP__SEARCH__URL`, as compose and Helm set it) and index.
    pub url: String,
    pub index: String,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            backend: "elasticsearch".into(),
            dir: ".stack/catalog-index".into(),
            url: "http://127.0.0.1:9200".into(),
            index: "products".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub kafka: KafkaSettings,
    pub mongo: MongoSettings,
    pub redis: RedisSettings,
    pub search: SearchSettings,
    pub relay_poll_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::on_ports(50055, 9105),
            telemetry: TelemetrySettings::default(),
            kafka: KafkaSettings::for_client("catalog"),
            mongo: MongoSettings::default(),
            redis: RedisSettings::default(),
            search: SearchSettings::default(),
            relay_poll_ms: 100,
        }
    }
}

pub async fn search_backend(s: &SearchSettings) -> anyhow::Result<Arc<dyn search::SearchBackend>> {
    Ok(match s.backend.as_str() {
        "embedded" => {
            let dir = (!s.dir.is_empty()).then(|| std::path::PathBuf::from(&s.dir));
            Arc::new(search::embedded::Embedded::open(dir.as_deref())?)
        }
        "elasticsearch" => Arc::new(search::elastic::Elastic::connect(&s.url, &s.index).await?),
        other => anyhow::bail!("unknown search backend {other} (embedded or elasticsearch)"),
    })
}

pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let kafka = &settings.kafka;
    let catalog_events = kafka.topic(topics::CATALOG_EVENTS);
    let inventory_events = kafka.topic(topics::INVENTORY_EVENTS);
    let order_events = kafka.topic(topics::ORDER_EVENTS);
    kafka
        .ensure_topics(&[&catalog_events, &inventory_events, &order_events])
        .await?;
    let mongo = mongodb::Client::with_uri_str(&settings.mongo.url).await?;
    let products = mongo
        .database(&settings.mongo.database)
        .collection::<mongodb::bson::Document>("products");
    let store = store::ProductStore {
        products: products.clone(),
    };
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(settings.redis.url.as_str())?)
            .await?;
    let recommendations = recommend::Recommendations::new(redis.clone(), &kafka.topic_prefix);
    let search = search_backend(&settings.search).await?;
    tracing::info!(backend = search.name(), "search backend ready");
    let catalog = grpc::Catalog {
        store: store.clone(),
        search: search.clone(),
        recommendations: recommendations.clone(),
        events_topic: catalog_events.clone(),
    };
    let (routes, health) = shop_core::grpc::base_routes()?;
    let routes = routes.add_service(CatalogServiceServer::new(catalog));
    let mut readiness = Readiness::new(health, &settings.server);
    let db = mongo.database(&settings.mongo.database);
    let broker = kafka.probe(&catalog_events, readiness.timeout())?;
    readiness
        .serves::<CatalogServiceServer<grpc::Catalog>>()
        .probe("kafka", broker)
        .probe("mongodb", move || {
            let db = db.clone();
            async move {
                db.run_command(mongodb::bson::doc! { "ping": 1 }).await?;
                Ok(())
            }
        })
        .probe("redis", move || {
            let mut redis = redis.clone();
            async move {
                redis::cmd("PING").query_async::<String>(&mut redis).await?;
                Ok(())
            }
        });
    if settings.search.backend == "elasticsearch" {
        // The embedded index lives in this process; the server is a dependency.
        let client = opensearch::OpenSearch::new(
            opensearch::http::transport::Transport::single_node(&settings.search.url)?,
        );
        readiness.probe("search", move || {
            let client = client.clone();
            async move {
                client.ping().send().await?.error_for_status_code()?;
                Ok(())
            }
        });
    }
    let mut app = shop_core::app::Application::bind(
        "catalog",
        &settings.server,
        routes,
        readiness,
        shutdown.clone(),
    )
    .await?;
    app.spawn(
        store::OutboxRelay {
            products,
            producer: kafka.producer(Duration::from_secs(30))?,
            poll: Duration::from_millis(settings.relay_poll_ms),
        }
        .run(shutdown.clone()),
    );
    let (k, stop) = (kafka.clone(), shutdown.clone());
    let group = format!("{}catalog-search", kafka.topic_prefix);
    app.spawn(async move {
        shop_messaging::consumer::run(
            &k,
            &group,
            &[&catalog_events, &inventory_events],
            stop,
            |e| {
                let (search, store) = (search.clone(), store.clone());
                async move { feed::index(&search, &store, &e).await }
            },
        )
        .await
    });
    let k = kafka.clone();
    let group = format!("{}catalog-recommendations", kafka.topic_prefix);
    app.spawn(async move {
        shop_messaging::consumer::run(&k, &group, &[&order_events], shutdown, |e| {
            let recs = recommendations.clone();
            async move { feed::recommend(&recs, &e).await }
        })
        .await
    });
    Ok(app)
}
