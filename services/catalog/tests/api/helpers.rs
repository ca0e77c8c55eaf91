//! `spawn_catalog()`: the catalog service on a free port with a database, topic namespace and
//! Redis key prefix of its own, and a search index of its own on the native stack's OpenSearch
//! (deleted by `stop`). `catalog_settings()` and `spawn_catalog_with()` start several instances
//! on the same settings (replicas: same database, same topics).

use shop_messaging::testing;
use shop_proto::{
    catalog::{
        CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
        product_stats_service_client::ProductStatsServiceClient,
        profile_service_client::ProfileServiceClient,
    },
    common::Money,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Catalog {
    pub client: CatalogServiceClient<Channel>,
    pub profiles: ProfileServiceClient<Channel>,
    pub stats: ProductStatsServiceClient<Channel>,
    pub settings: shop_catalog::Settings,
    stop: CancellationToken,
}

pub async fn spawn_catalog() -> Catalog {
    spawn_catalog_with(catalog_settings()).await
}

/// The settings `spawn_catalog()` uses: a database, topic prefix and search index of their own.
pub fn catalog_settings() -> shop_catalog::Settings {
    let base = testing::service_settings("catalog");
    let id = &uuid::Uuid::now_v7().simple().to_string()[20..];
    shop_catalog::Settings {
        // Port 0 (the default): free ports.
        server: shop_core::config::ServerSettings::default(),
        kafka: base.kafka.clone(),
        mongo: shop_catalog::MongoSettings {
            database: format!("test_{id}"),
            ..Default::default()
        },
        search: shop_catalog::SearchSettings {
            index: format!("products-test-{id}"),
            ..Default::default()
        },
        relay_poll_ms: 50,
        ..Default::default()
    }
}

/// A catalog on `settings` (spawned twice on the same settings: two replicas).
pub async fn spawn_catalog_with(settings: shop_catalog::Settings) -> Catalog {
    let stop = CancellationToken::new();
    let app = shop_catalog::build(&settings, stop.clone())
        .await
        .expect("catalog starts");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    Catalog {
        client: CatalogServiceClient::new(channel.clone()),
        profiles: ProfileServiceClient::new(channel.clone()),
        stats: ProductStatsServiceClient::new(channel),
        settings,
        stop,
    }
}

pub fn product(sku: &str, name: &str, category: &str, price_minor: i64) -> Product {
    Product {
        sku: sku.into(),
        name: name.into(),
        description: format!("{name}, the one you want"),
        category: category.into(),
        price: Some(Money {
            amount_minor: price_minor,
            currency: "EUR".into(),
        }),
        ..Default::default()
    }
}

impl Catalog {
    pub async fn create(&self, p: Product) -> Product {
        self.client
            .clone()
            .create_product(CreateProductRequest { product: Some(p) })
            .await
            .expect("create product")
            .into_inner()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Ok(client) = mongodb::Client::with_uri_str(&self.settings.mongo.url).await {
            let db = &self.settings.mongo.database;
            let _ = client.database(db).drop().await;
            for region in self.settings.regions.names.split(',') {
                let name = shop_catalog::regions::database_name(db, region.trim());
                let _ = client.database(&name).drop().await;
            }
        }
        let _ = shop_catalog::search::elastic::delete_index(
            &self.settings.search.url,
            &self.settings.search.index,
        )
        .await;
    }
}
