//! `regions.converged`: the regions' replicas of each user profile (causal, vector clocks) and
//! each product's counters (CRDTs) hold the same state once quiet: the same clock, the same
//! fields and nothing waiting for a cause; the same counts. Read from every region's MongoDB
//! database (`<catalog database>_<region>`).
//!
//! A replica behind is normal while updates travel. A difference is reported only when the
//! second look (`--confirm-after`) finds the very same states again: the replicas disagree
//! and nothing moved in between (an update lost, or one waiting for a cause that never comes).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::Value;

use super::{Check, CheckArgs};

/// The collections that are replicated between regions.
const REPLICATED: [&str; 2] = ["profiles", "product_counters"];

pub async fn converged(args: &CheckArgs) -> anyhow::Result<Check> {
    let mut check = Check::new("regions.converged");
    let regions: Vec<&str> = args
        .regions
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if regions.len() < 2 {
        return Ok(check);
    }
    let mongo = mongodb::Client::with_uri_str(&args.stores.mongo_url).await?;
    for collection in REPLICATED {
        // key -> each region's state (None: the region has no such document).
        let mut states: BTreeMap<String, Vec<Option<Value>>> = BTreeMap::new();
        for (i, region) in regions.iter().enumerate() {
            let db = shop_catalog::regions::database_name(&args.stores.catalog_database, region);
            let docs = mongo.database(&db).collection::<Document>(collection);
            let mut cursor = docs.find(doc! {}).await?;
            while let Some(d) = cursor.try_next().await? {
                let Ok(key) = d.get_str("_id") else { continue };
                let state = serde_json::from_str(d.get_str("state").unwrap_or("null"))
                    .unwrap_or(Value::Null);
                states
                    .entry(key.to_owned())
                    .or_insert_with(|| vec![None; regions.len()])[i] = Some(state);
            }
        }
        for (key, per_region) in states {
            check.item();
            if per_region.iter().all(|s| *s == per_region[0]) {
                continue;
            }
            let missing: Vec<&str> = regions
                .iter()
                .zip(&per_region)
                .filter(|(_, s)| s.is_none())
                .map(|(r, _)| *r)
                .collect();
            let what = if missing.is_empty() {
                format!("{} hold different states", regions.join(", "))
            } else {
                format!("missing in {}", missing.join(", "))
            };
            // The states themselves are part of the key: confirmed only if unchanged.
            let seen = fingerprint(&serde_json::to_string(&per_region).unwrap_or_default());
            check.violation(format!("{collection}/{key} #{seen}"), what);
        }
    }
    Ok(check)
}

/// A hash of `s` (std's SipHash with its fixed keys: the same within a run, which is all the
/// two looks compare).
fn fingerprint(s: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016x}", h.finish())
}
