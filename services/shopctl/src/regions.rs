//! The regions part of `make run`: profiles written in one region and read in the other with
//! a session token (causal consistency, monotonic reads), concurrent writes of one field in
//! both regions (they must converge), and product views and likes counted in both regions at
//! once (CRDT counters: both must reach the exact totals).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use shop_proto::catalog::{
    CreateProductRequest, GetProductStatsRequest, GetProfileRequest, LikeProductRequest, Product,
    RecordViewRequest, UpdateProfileRequest, catalog_service_client::CatalogServiceClient,
    product_stats_service_client::ProductStatsServiceClient,
    profile_service_client::ProfileServiceClient,
};
use tonic::{Code, transport::Channel};

#[derive(Debug, Serialize)]
pub struct RegionsSummary {
    pub users: usize,
    /// Reads at `us` with the token of a write at `eu` that `us` had not applied yet: refused
    /// at once (the session is sent back to `eu`), then served after waiting.
    pub session_refused: usize,
    pub session_waited_ms_p50: u64,
    /// Reads at `us` that showed a default address without the address it names: must be 0.
    pub effect_before_cause: usize,
    /// Profiles written concurrently in both regions that differ between them at the end.
    pub diverged: usize,
    pub views: u64,
    pub likes: i64,
    /// Regions whose counters are not the exact totals at the end: must be 0.
    pub counter_mismatch: usize,
}

impl RegionsSummary {
    pub fn is_consistent(&self) -> bool {
        self.effect_before_cause == 0 && self.diverged == 0 && self.counter_mismatch == 0
    }
}

fn update(region: &str, user: &str, set: &[(&str, &str)]) -> UpdateProfileRequest {
    UpdateProfileRequest {
        region: region.into(),
        user_id: user.into(),
        set: set
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ..Default::default()
    }
}

pub async fn run(run: &str, users: usize, channel: Channel) -> anyhow::Result<RegionsSummary> {
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let mut stats = ProductStatsServiceClient::new(channel.clone());
    let (mut refused, mut waited, mut effect_before_cause, mut diverged) = (0, Vec::new(), 0, 0);
    for i in 0..users {
        let user = format!("demo-{run}-{i}");
        // eu: an address, then the default that names it (the second depends on the first).
        let mut w = update("eu", &user, &[("address.home", "1 Quay St, Dublin")]);
        profiles
            .update_profile(w.clone())
            .await
            .context("write at eu")?;
        w.set = [("default_address".to_owned(), "home".to_owned())].into();
        let token = profiles.update_profile(w).await?.into_inner().session;
        // us, without waiting: served only if it has applied the session's writes already.
        let mut read = GetProfileRequest {
            region: "us".into(),
            user_id: user.clone(),
            session: token,
            wait_ms: 0,
        };
        let started = Instant::now();
        let p = match profiles.get_profile(read.clone()).await {
            Ok(p) => p.into_inner(),
            Err(e) if e.code() == Code::FailedPrecondition => {
                refused += 1;
                read.wait_ms = 2000;
                profiles
                    .get_profile(read)
                    .await
                    .context("read at us, waiting")?
                    .into_inner()
            }
            Err(e) => return Err(e).context("read at us"),
        };
        waited.push(started.elapsed().as_millis() as u64);
        let has = |k: &str| p.fields.contains_key(k);
        if has("default_address") && !has("address.home") {
            effect_before_cause += 1;
        }
        // Both regions write the name at once, neither having seen the other's.
        let (mut at_eu, mut at_us) = (profiles.clone(), profiles.clone());
        let (a, b) = tokio::join!(
            at_eu.update_profile(update("eu", &user, &[("name", "Ada")])),
            at_us.update_profile(update("us", &user, &[("name", "Ada L.")])),
        );
        a.context("name at eu")?;
        b.context("name at us")?;
    }
    // Every profile the same in both regions, within 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..users {
        let user = format!("demo-{run}-{i}");
        loop {
            let get = |region: &str| GetProfileRequest {
                region: region.into(),
                user_id: user.clone(),
                ..Default::default()
            };
            let eu = profiles.get_profile(get("eu")).await?.into_inner();
            let us = profiles.get_profile(get("us")).await?.into_inner();
            let clock = |t: Option<shop_proto::catalog::SessionToken>| t.map(|t| t.clock);
            if eu.fields == us.fields && clock(eu.session) == clock(us.session) {
                break;
            }
            if Instant::now() > deadline {
                diverged += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (views, likes, counter_mismatch) = count(run, &mut stats, channel).await?;
    waited.sort_unstable();
    Ok(RegionsSummary {
        users,
        session_refused: refused,
        session_waited_ms_p50: waited.get(waited.len() / 2).copied().unwrap_or(0),
        effect_before_cause,
        diverged,
        views,
        likes,
        counter_mismatch,
    })
}

/// Views and likes in both regions at once; both must reach the exact totals within 10 s.
async fn count(
    run: &str,
    stats: &mut ProductStatsServiceClient<Channel>,
    channel: Channel,
) -> anyhow::Result<(u64, i64, usize)> {
    let sku = format!("viewed-{run}");
    CatalogServiceClient::new(channel)
        .create_product(CreateProductRequest {
            product: Some(Product {
                sku: sku.clone(),
                name: "Much viewed lamp".into(),
                category: "lamps".into(),
                price: Some(shop_proto::common::Money {
                    amount_minor: 4_500,
                    currency: "USD".into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .context("create the viewed product")?;
    let work = |region: &'static str, n: u32| {
        let (mut stats, sku) = (stats.clone(), sku.clone());
        async move {
            for i in 0..n {
                let view = RecordViewRequest {
                    region: region.into(),
                    sku: sku.clone(),
                    count: 1 + i % 3,
                };
                stats.record_view(view).await?;
                let like = LikeProductRequest {
                    region: region.into(),
                    sku: sku.clone(),
                    like: i % 4 != 3,
                };
                stats.like_product(like).await?;
            }
            anyhow::Ok(())
        }
    };
    let (a, b) = tokio::join!(work("eu", 40), work("us", 25));
    a?;
    b?;
    let exact = |n: u32| -> (u64, i64) {
        (
            (0..n).map(|i| u64::from(1 + i % 3)).sum(),
            (0..n).map(|i| if i % 4 != 3 { 1 } else { -1 }).sum(),
        )
    };
    let ((v1, l1), (v2, l2)) = (exact(40), exact(25));
    let (views, likes) = (v1 + v2, l1 + l2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut mismatch = 0;
    for region in ["eu", "us"] {
        loop {
            let s = stats
                .get_product_stats(GetProductStatsRequest {
                    region: region.into(),
                    sku: sku.clone(),
                })
                .await?
                .into_inner();
            if (s.views, s.likes) == (views, likes) {
                break;
            }
            if Instant::now() > deadline {
                mismatch += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((views, likes, mismatch))
}

pub fn print(s: &RegionsSummary) {
    println!(
        "regions: {} profiles written at eu and read at us with a session token; views and likes counted in both",
        s.users
    );
    println!(
        "  session reads refused at us   {:>4} (us had not applied the session's writes: sent to eu, then served after waiting, p50 {} ms)",
        s.session_refused, s.session_waited_ms_p50
    );
    println!(
        "  effect before cause           {:>4} (a default address shown without the address)",
        s.effect_before_cause
    );
    println!(
        "  diverged profiles             {:>4} (concurrent writes of one field in both regions)",
        s.diverged
    );
    println!(
        "  counter mismatch              {:>4} (views {} and likes {} in both regions, exact)",
        s.counter_mismatch, s.views, s.likes
    );
}
