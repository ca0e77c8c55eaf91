//! `shopctl outbox` for the outboxes outside PostgreSQL: the cart's Redis stream and the
//! catalog's in-document outbox (both relayed by the one loop, both able to park).

use clap::Args;
use futures::TryStreamExt;
use mongodb::bson::doc;
use redis::AsyncCommands;

#[derive(Args, Clone)]
pub struct Stores {
    #[arg(long, env = "SHOP_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The environment's topic prefix (the cart's stream is `<prefix>outbox:cart`).
    #[arg(long, env = "SHOP_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    #[arg(
        long,
        env = "SHOP_MONGO_URL",
        default_value = "mongodb://127.0.0.1:27017"
    )]
    pub mongo_url: String,
    #[arg(long, default_value = "shop_catalog")]
    pub catalog_database: String,
}

async fn redis(s: &Stores) -> anyhow::Result<redis::aio::ConnectionManager> {
    Ok(redis::aio::ConnectionManager::new(redis::Client::open(s.redis_url.as_str())?).await?)
}

fn products(client: &mongodb::Client, s: &Stores) -> mongodb::Collection<mongodb::bson::Document> {
    client.database(&s.catalog_database).collection("products")
}

/// (pending, parked as (id, error)) of `service` (`cart` or `catalog`).
pub async fn list(s: &Stores, service: &str) -> anyhow::Result<(i64, Vec<(String, String)>)> {
    match service {
        "cart" => {
            let mut conn = redis(s).await?;
            let stream = shop_cart::store::outbox_stream(&s.topic_prefix);
            let pending: i64 = conn.xlen(&stream).await?;
            let parked: std::collections::BTreeMap<String, String> =
                conn.hgetall(format!("{stream}:parked")).await?;
            Ok((pending, parked.into_iter().collect()))
        }
        _ => {
            let client = mongodb::Client::with_uri_str(&s.mongo_url).await?;
            let products = products(&client, s);
            let pending = products
                .count_documents(doc! { "outbox_pending": true })
                .await?;
            let parked: Vec<mongodb::bson::Document> = products
                .find(doc! { "outbox_parked": true })
                .limit(1000)
                .await?
                .try_collect()
                .await?;
            Ok((
                i64::try_from(pending).unwrap_or(i64::MAX),
                parked
                    .iter()
                    .map(|d| {
                        (
                            d.get_str("_id").unwrap_or_default().to_owned(),
                            d.get_str("outbox_error").unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            ))
        }
    }
}

/// Puts `service`'s parked messages back in line; how many.
pub async fn redrive(s: &Stores, service: &str) -> anyhow::Result<u64> {
    match service {
        "cart" => {
            let stream = shop_cart::store::outbox_stream(&s.topic_prefix);
            Ok(shop_cart::relay::redrive(&redis(s).await?, &stream).await? as u64)
        }
        _ => {
            let client = mongodb::Client::with_uri_str(&s.mongo_url).await?;
            shop_catalog::relay::redrive(&products(&client, s)).await
        }
    }
}
