//! PostgreSQL: one database per service, a pool, and database creation for the local stack.
//!
//! Migrations are embedded in each service (`sqlx::migrate!()`) and run at start-up, after the
//! messaging library's own (outbox and inbox tables); see `shop_messaging::migrate`.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseSettings;

/// Connects a pool, creating the database first when `create_if_missing` is set.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&settings.url)
        .context("database.url is not a valid PostgreSQL URL")?
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1));
    let options = if settings.notify {
        options
    } else {
        options.options([("shop.notify", "off")])
    };
    if settings.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .test_before_acquire(settings.test_before_acquire)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to database {:?}",
                database_name(&settings.url)
            )
        })
}

/// Creates the database named in `options` through the `postgres` maintenance database.
/// Safe to race: a concurrent creator winning is success.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("cannot reach PostgreSQL (maintenance database `postgres`)")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound; quote it.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e).context("CREATE DATABASE failed"),
        }
    }
    Ok(())
}

/// Drops a database (tests clean up their scratch databases with it).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .context("url names no database")?
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.database("postgres")).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(&sql).execute(&mut admin).await?;
    Ok(())
}

fn database_name(url: &str) -> Option<String> {
    PgConnectOptions::from_str(url)
        .ok()
        .and_then(|o| o.get_database().map(str::to_owned))
}
