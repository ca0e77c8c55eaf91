//! `shopctl drop-env --prefix P`: deletes everything an environment named by prefix `P` owns on
//! the shared stores, so a scratch environment (the saga benchmark's `bench_`) starts fresh and
//! never mixes with the platform's own data: the broker's topics starting with `P`, the
//! PostgreSQL databases `P<service>`, the MongoDB database `Pcatalog`, the search index
//! `Pproducts`, the ClickHouse database `Panalytics` and the Redis keys starting with `P`
//! (carts, the cart's outbox stream, recommendations). `--topics-only` keeps the rest (what
//! `make test` uses for the tests' `test*` topics, which are all their owners leave behind).

use anyhow::Context;
use redis::AsyncCommands;

#[derive(clap::Args, Debug)]
pub struct DropEnvArgs {
    /// The environment's prefix, e.g. `bench_` (refused: empty, or the platform's own `shop_`).
    #[arg(long)]
    pub prefix: String,
    /// Only the broker's topics.
    #[arg(long)]
    pub topics_only: bool,
    #[arg(long, env = "SHOP_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(
        long,
        env = "SHOP_MONGO_URL",
        default_value = "mongodb://127.0.0.1:27017"
    )]
    pub mongo_url: String,
    #[arg(long, env = "SHOP_SEARCH_URL", default_value = "http://127.0.0.1:9200")]
    pub search_url: String,
    #[arg(
        long,
        env = "SHOP_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
}

pub async fn run(
    pg_url: &str,
    kafka: &shop_messaging::kafka::KafkaSettings,
    args: &DropEnvArgs,
) -> anyhow::Result<()> {
    let p = args.prefix.as_str();
    anyhow::ensure!(
        p.len() >= 3 && p != "shop_" && p != "shop",
        "refusing to drop environment {p:?}: name a scratch environment (e.g. bench_)"
    );
    let topics = kafka
        .delete_topics_with_prefix(&[p.to_owned()])
        .await
        .context("delete topics")?;
    println!("{p}: {topics} topics deleted");
    if args.topics_only {
        return Ok(());
    }
    let base = pg_url
        .rsplit_once('/')
        .context("--pg-url names no database")?
        .0;
    for service in ["order", "payment", "inventory", "shipping"] {
        shop_core::db::drop_database(&format!("{base}/{p}{service}")).await?;
    }
    let mongo = mongodb::Client::with_uri_str(&args.mongo_url).await?;
    // The catalog's database and its regions' (`<catalog>_<region>`).
    for db in mongo.list_database_names().await? {
        if db == format!("{p}catalog") || db.starts_with(&format!("{p}catalog_")) {
            mongo
                .database(&db)
                .drop()
                .await
                .context("drop a MongoDB database")?;
        }
    }
    shop_catalog::search::elastic::delete_index(&args.search_url, &format!("{p}products")).await?;
    let ch = shop_analytics::store::Store::new(&shop_analytics::store::ClickHouseSettings {
        url: args.clickhouse_url.clone(),
        // Connected to the server's own database: the one dropped may not exist.
        database: "default".into(),
        ..Default::default()
    });
    ch.client
        .query(&format!("DROP DATABASE IF EXISTS {p}analytics"))
        .execute()
        .await
        .context("drop the ClickHouse database")?;
    let mut redis =
        redis::aio::ConnectionManager::new(redis::Client::open(args.redis_url.as_str())?).await?;
    let keys: Vec<String> = redis.keys(format!("{p}*")).await?;
    for chunk in keys.chunks(500) {
        let _: () = redis.del(chunk).await?;
    }
    println!(
        "{p}: databases {p}{{order,payment,inventory,shipping}}, {p}catalog(_<region>), {p}analytics, index {p}products and {} Redis keys dropped",
        keys.len()
    );
    Ok(())
}
