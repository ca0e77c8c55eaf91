//! Regional data: user profiles and preferences with causal consistency (seed 000: "causal
//! consistency for related operations", preferences in MongoDB), and product views and likes as
//! CRDT counters (seed 003), each region a replica with a MongoDB database of its own
//! (`<catalog database>_<region>`).
//!
//! A catalog instance serves the regions `SHOP__REGIONS__SERVE` names (default: all of them,
//! which is how the native stack and the demo run two regions in one process; a deployment per
//! region sets one). A change is applied in its region at once and travels to the others
//! through Kafka (the document's outbox and the catalog's relay); each region consumes the
//! topics as a consumer group of its own, so every region reads every change.
//!
//! Why the catalog and not a service of their own: a profile is the catalog's kind of data
//! (documents in MongoDB, eventually consistent, read by the storefront beside products), and
//! the catalog already owns the MongoDB, the in-document outbox and its relay; an eighth
//! service would repeat all three.
//!
//! - [`docs`]: the documents (state, version, outbox) and their one-document writes.
//! - [`profiles`]: vector clocks, causal delivery (`shop_crdt::causal`), per-field last writer.
//! - [`counters`]: G-Counter views and PN-Counter likes, merged from whole states.
//! - [`grpc`]: `ProfileService` (session tokens: monotonic reads, read-your-writes across
//!   regions) and `ProductStatsService`.

pub mod counters;
pub mod docs;
pub mod grpc;
pub mod profiles;

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use shop_core::fields::Region as RegionName;
use shop_messaging::{EventEnvelope, inbox::HandlerError, topics::types};

use docs::Docs;

/// `SHOP__REGIONS__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionSettings {
    /// Every region, comma-separated (`eu,us`).
    pub names: String,
    /// The regions this instance serves, comma-separated; empty: all of them.
    pub serve: String,
    /// A fault hook for tests and demos: each profile update from another region waits this
    /// long before it is applied here, so this instance's regions lag.
    pub apply_delay_ms: u64,
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            names: "eu,us".into(),
            serve: String::new(),
            apply_delay_ms: 0,
        }
    }
}

fn region_list(field: &str, raw: &str) -> anyhow::Result<Vec<String>> {
    raw.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            RegionName::parse(field, r)
                .map(RegionName::into_string)
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))
        })
        .collect()
}

/// The database of `region`'s replica, beside the catalog's own.
pub fn database_name(catalog_database: &str, region: &str) -> String {
    format!("{catalog_database}_{region}")
}

/// This instance's replica of one region.
pub struct Region {
    pub name: String,
    pub profiles: Docs,
    pub counters: Docs,
}

/// The configured regions and this instance's replicas of them.
pub struct Regions {
    pub all: Vec<String>,
    pub served: BTreeMap<String, Region>,
    /// The prefixed `shop.catalog.profiles` and `shop.catalog.counters` topics.
    pub profiles_topic: String,
    pub counters_topic: String,
    pub apply_delay: Duration,
}

impl Regions {
    pub fn new(
        s: &RegionSettings,
        mongo: &mongodb::Client,
        catalog_database: &str,
        (profiles_topic, counters_topic): (String, String),
    ) -> anyhow::Result<Self> {
        let all = region_list("SHOP__REGIONS__NAMES", &s.names)?;
        anyhow::ensure!(!all.is_empty(), "SHOP__REGIONS__NAMES names no region");
        let mut serve = region_list("SHOP__REGIONS__SERVE", &s.serve)?;
        if serve.is_empty() {
            serve.clone_from(&all);
        }
        let mut served = BTreeMap::new();
        for r in serve {
            anyhow::ensure!(
                all.contains(&r),
                "SHOP__REGIONS__SERVE: {r} is not in SHOP__REGIONS__NAMES"
            );
            let db = mongo.database(&database_name(catalog_database, &r));
            let region = Region {
                name: r.clone(),
                profiles: Docs::new(db.collection("profiles")),
                counters: Docs::new(db.collection("product_counters")),
            };
            served.insert(r, region);
        }
        Ok(Self {
            all,
            served,
            profiles_topic,
            counters_topic,
            apply_delay: Duration::from_millis(s.apply_delay_ms),
        })
    }

    /// This instance's replica of `region`, or why there is none.
    pub fn get(&self, field: &str, region: &str) -> Result<&Region, shop_core::ServiceError> {
        let region = RegionName::parse(field, region)?;
        if !self.all.iter().any(|r| r == region.as_str()) {
            return Err(shop_core::ServiceError::invalid(
                field,
                format!("unknown region {region}; regions: {}", self.all.join(", ")),
            ));
        }
        self.served.get(region.as_str()).ok_or_else(|| {
            shop_core::ServiceError::FailedPrecondition(format!(
                "region {region} is not served by this instance"
            ))
        })
    }

    /// A served region's consumer: profile updates and counter states of the other regions.
    pub async fn apply(&self, region: &str, e: &EventEnvelope) -> Result<(), HandlerError> {
        let Some(r) = self.served.get(region) else {
            return Ok(());
        };
        match e.event_type.as_str() {
            types::PROFILE_UPDATED => profiles::apply(r, &self.all, e, self.apply_delay).await,
            types::PRODUCT_COUNTERS => counters::apply(r, &self.all, e).await,
            _ => Ok(()),
        }
    }
}
