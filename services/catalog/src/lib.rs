//! # shop-catalog
//!
//! Products, product search and recommendations; eventually consistent, read-your-writes for the
//! writer (seed 003).
//!
//! - [`domain`]: a product, validated (price in minor units).
//! - [`store`]: products in MongoDB with versioned updates and the outbox inside each document
//!   (one atomic single-document write), and the relay that publishes it to Kafka.
//! - [`search`]: the search interface and its two backends, the Elasticsearch API (OpenSearch,
//!   the default) and tantivy (embedded; a consumer group of the feed per replica, since each
//!   replica has an index of its own: [`search_feed_group`]).
//! - [`recommend`]: "bought together" scores in Redis, counted once per order.
//! - [`feed`]: the consumers that keep search and recommendations up to date from events.
//! - [`grpc`]: create / update (optimistic on `expected_version`) / get, search, recommendations.
//! - [`regions`]: one replica per region (a MongoDB database each) of user profiles (causally
//!   consistent through Kafka, session tokens) and of product views and likes (CRDT counters).
//! - [`build`]: the service, assembled; ready (gRPC health) while MongoDB, Redis, the search
//!   server (the `elasticsearch` backend) and Kafka answer.

pub mod domain;
pub mod feed;
pub mod grpc;
pub mod recommend;
pub mod regions;
pub mod relay;
pub mod search;
pub mod store;

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use shop_core::{
    config::{RedisSettings, ServerSettings, TelemetrySettings},
    readiness::Readiness,
};
use shop_messaging::{kafka::KafkaSettings, topics};
use shop_proto::catalog::{
    catalog_service_server::CatalogServiceServer,
    product_stats_service_server::ProductStatsServiceServer,
    profile_service_server::ProfileServiceServer,
};
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
    /// `SHOP__SEARCH__REPLICA_ID`, the embedded backend only: names this replica's consumer
    /// group of the search feed (`<prefix>catalog-search-<replica id>`), because an index per
    /// replica needs every partition (one shared group would give each replica only some).
    /// Unset: with an index on disk, an id kept in the index directory ([`REPLICA_ID_FILE`],
    /// made once), so the group's offsets always belong to that index (a wiped directory gets a
    /// new group that reads everything again); in memory, a fresh id per start (the index is
    /// empty, so it must read everything). Set, with an index in memory, it is the group's
    /// prefix and a fresh id follows it, for the same reason. Letters, digits, `.`, `_`, `-`.
    pub replica_id: String,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            backend: "elasticsearch".into(),
            dir: ".stack/catalog-index".into(),
            url: "http://127.0.0.1:9200".into(),
            index: "products".into(),
            replica_id: String::new(),
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
    pub regions: regions::RegionSettings,
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
            regions: regions::RegionSettings::default(),
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

/// The file in the embedded index's directory that keeps its replica id.
pub const REPLICA_ID_FILE: &str = "catalog-replica-id";

/// Most events the search feed applies together (see [`feed::index_batch`]).
const FEED_BATCH: usize = 500;

fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn checked_replica_id(id: &str, from: &str) -> anyhow::Result<String> {
    let id = id.trim();
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    anyhow::ensure!(
        ok,
        "{from}: replica id {id:?} must be 1-128 letters, digits, '.', '_' or '-'"
    );
    Ok(id.to_owned())
}

/// The embedded index's replica id (see [`SearchSettings::replica_id`]). Called after the
/// index is open: its writer lock keeps a second process off the directory, and so off the
/// id file.
pub fn replica_id(s: &SearchSettings) -> anyhow::Result<String> {
    let set = (!s.replica_id.trim().is_empty())
        .then(|| checked_replica_id(&s.replica_id, "SHOP__SEARCH__REPLICA_ID"))
        .transpose()?;
    if s.dir.is_empty() {
        return Ok(match set {
            Some(id) => format!("{id}-{}", fresh_id()),
            None => fresh_id(),
        });
    }
    if let Some(id) = set {
        return Ok(id);
    }
    let path = std::path::Path::new(&s.dir).join(REPLICA_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) => checked_replica_id(&id, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = fresh_id();
            // Written whole, then renamed into place: never a half-written id.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The search feed's consumer group. One shared index (`elasticsearch`): one group, the
/// replicas share the partitions and the work. An index per replica (`embedded`): a group per
/// replica, so each reads every partition, from the earliest offset when the group is new
/// (`auto.offset.reset=earliest`, [`KafkaSettings::consumer_config`]).
pub fn search_feed_group(kafka: &KafkaSettings, s: &SearchSettings) -> anyhow::Result<String> {
    let shared = format!("{}catalog-search", kafka.topic_prefix);
    Ok(match s.backend.as_str() {
        "embedded" => format!("{shared}-{}", replica_id(s)?),
        _ => shared,
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
    let profile_updates = kafka.topic(topics::CATALOG_PROFILES);
    let counter_states = kafka.topic(topics::CATALOG_COUNTERS);
    kafka
        .ensure_topics(&[
            &catalog_events,
            &inventory_events,
            &order_events,
            &profile_updates,
            &counter_states,
        ])
        .await?;
    let mongo = mongodb::Client::with_uri_str(&settings.mongo.url).await?;
    let products = mongo
        .database(&settings.mongo.database)
        .collection::<mongodb::bson::Document>("products");
    let store = store::ProductStore::new(products.clone());
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(settings.redis.url.as_str())?)
            .await?;
    let recommendations = recommend::Recommendations::new(redis.clone(), &kafka.topic_prefix);
    let redis_for_relay = redis.clone();
    let redis_for_regions = redis.clone();
    let search = search_backend(&settings.search).await?;
    let search_group = search_feed_group(kafka, &settings.search)?;
    tracing::info!(backend = search.name(), group = %search_group, "search backend ready");
    let catalog = grpc::Catalog {
        store: store.clone(),
        search: search.clone(),
        recommendations: recommendations.clone(),
        events_topic: catalog_events.clone(),
    };
    let regions = Arc::new(regions::Regions::new(
        &settings.regions,
        &mongo,
        &settings.mongo.database,
        (profile_updates, counter_states),
    )?);
    let (routes, health) = shop_core::grpc::base_routes()?;
    let routes = routes
        .add_service(CatalogServiceServer::new(catalog))
        .add_service(ProfileServiceServer::new(regions::grpc::Profiles {
            regions: regions.clone(),
        }))
        .add_service(ProductStatsServiceServer::new(regions::grpc::Stats {
            regions: regions.clone(),
            products: store.clone(),
        }));
    let mut readiness = Readiness::new(health, &settings.server);
    let db = mongo.database(&settings.mongo.database);
    let broker = kafka.probe(&catalog_events, readiness.timeout())?;
    readiness
        .serves::<CatalogServiceServer<grpc::Catalog>>()
        .serves::<ProfileServiceServer<regions::grpc::Profiles>>()
        .serves::<ProductStatsServiceServer<regions::grpc::Stats>>()
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
        relay::relay(
            products,
            store.locks.clone(),
            redis_for_relay,
            format!("{}outbox:catalog:lease", kafka.topic_prefix),
            kafka,
            Duration::from_millis(settings.relay_poll_ms),
        )?
        .run(shutdown.clone()),
    );
    spawn_regions(&mut app, &regions, settings, &redis_for_regions, &shutdown)?;
    let (k, stop) = (kafka.clone(), shutdown.clone());
    app.spawn(async move {
        shop_messaging::consumer::run_batched(
            &k,
            &search_group,
            &[&catalog_events, &inventory_events],
            FEED_BATCH,
            stop,
            |events| {
                let (search, store) = (search.clone(), store.clone());
                async move { feed::index_batch(&search, &store, &events).await }
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

/// Each served region's relays (its profiles' and counters' outboxes) and consumer (the other
/// regions' changes, as a group of its own: every region reads every change).
fn spawn_regions(
    app: &mut shop_core::app::Application,
    regions: &Arc<regions::Regions>,
    settings: &Settings,
    redis: &redis::aio::ConnectionManager,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    let poll = Duration::from_millis(settings.relay_poll_ms);
    for (name, region) in &regions.served {
        for (what, docs) in [
            ("profiles", &region.profiles),
            ("counters", &region.counters),
        ] {
            app.spawn(
                relay::relay_named(
                    &format!("{what}-{name}"),
                    docs.collection.clone(),
                    docs.locks.clone(),
                    redis.clone(),
                    format!("{}outbox:{what}:{name}:lease", kafka.topic_prefix),
                    kafka,
                    poll,
                )?
                .run(shutdown.clone()),
            );
        }
        let (k, stop, regions) = (kafka.clone(), shutdown.clone(), regions.clone());
        let group = format!("{}catalog-regions-{name}", kafka.topic_prefix);
        let name = name.clone();
        app.spawn(async move {
            let topics = [
                regions.profiles_topic.as_str(),
                regions.counters_topic.as_str(),
            ];
            shop_messaging::consumer::run(&k, &group, &topics, stop, |e| {
                let (regions, name) = (regions.clone(), name.clone());
                async move { regions.apply(&name, &e).await }
            })
            .await
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(dir: &str, replica_id: &str) -> SearchSettings {
        SearchSettings {
            backend: "embedded".into(),
            dir: dir.into(),
            replica_id: replica_id.into(),
            ..Default::default()
        }
    }

    fn kafka() -> KafkaSettings {
        KafkaSettings {
            topic_prefix: "env.".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_shared_index_has_one_group_and_every_embedded_index_its_own() {
        let shared = search_feed_group(&kafka(), &SearchSettings::default()).unwrap();
        assert_eq!(shared, "env.catalog-search");
        // In memory: a new group on every start (the index starts empty).
        let (a, b) = (
            search_feed_group(&kafka(), &embedded("", "")).unwrap(),
            search_feed_group(&kafka(), &embedded("", "")).unwrap(),
        );
        assert!(a.starts_with("env.catalog-search-"), "{a}");
        assert_ne!(a, b);
        let named = search_feed_group(&kafka(), &embedded("", "pod-1")).unwrap();
        assert!(named.starts_with("env.catalog-search-pod-1-"), "{named}");
        assert_ne!(
            named,
            search_feed_group(&kafka(), &embedded("", "pod-1")).unwrap()
        );
        assert!(search_feed_group(&kafka(), &embedded("", "no spaces")).is_err());
    }

    #[test]
    fn an_index_on_disk_keeps_its_replica_id() {
        let dir = std::env::temp_dir().join(format!("catalog-replica-{}", fresh_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = embedded(dir.to_str().unwrap(), "");
        let first = search_feed_group(&kafka(), &s).unwrap();
        assert_eq!(search_feed_group(&kafka(), &s).unwrap(), first);
        let id = std::fs::read_to_string(dir.join(REPLICA_ID_FILE)).unwrap();
        assert_eq!(first, format!("env.catalog-search-{}", id.trim()));
        // Set explicitly, it wins.
        let set = embedded(dir.to_str().unwrap(), "catalog-0");
        assert_eq!(
            search_feed_group(&kafka(), &set).unwrap(),
            "env.catalog-search-catalog-0"
        );
        // A wiped directory is a new index: a new group, which reads everything again.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert_ne!(search_feed_group(&kafka(), &s).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
