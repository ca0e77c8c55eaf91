//! `ProfileService`: reads and writes at a region, with session tokens; `ProductStatsService`:
//! the regions' counters.
//!
//! A token is what a client session has seen of one profile: a vector clock (updates per region
//! of origin) and the region that issued it. Every answer hands back the token merged with what
//! the answering region has applied. A region asked with a token it has not reached waits up to
//! `wait_ms` for its consumer to catch up, then refuses with FAILED_PRECONDITION naming the
//! region that issued the token (which has it): so a session never reads older than it has read
//! (monotonic reads) or than it has written (read-your-writes), whichever region it asks, and a
//! write with a token comes after everything the session saw (writes follow reads).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use shop_core::{
    ServiceError,
    fields::{self, FieldName, Region as RegionName},
};
use shop_crdt::{causal::Replica, vclock::VectorClock};
use shop_proto::catalog::{
    GetProductStatsRequest, GetProfileRequest, LikeProductRequest, ProductStats, Profile,
    RecordViewRequest, RegionCounts, SessionToken, UpdateProfileRequest,
    product_stats_service_server::ProductStatsService, profile_service_server::ProfileService,
};
use tonic::{Request, Response, Status};

use super::{
    Region, Regions,
    counters::{Change, Counters},
    profiles::profile_updated,
};
use crate::store::ProductStore;

/// Most fields one update sets or removes.
pub const MAX_CHANGES: usize = 32;
/// The longest a request may wait for its region to reach its session.
pub const MAX_WAIT_MS: u32 = 2_000;

pub struct Profiles {
    pub regions: Arc<Regions>,
}

fn changes(
    set: &std::collections::HashMap<String, String>,
    remove: &[String],
) -> Result<BTreeMap<String, Option<String>>, ServiceError> {
    if set.len() + remove.len() > MAX_CHANGES {
        return Err(ServiceError::invalid(
            "set",
            format!("at most {MAX_CHANGES} fields set or removed in one update"),
        ));
    }
    if set.is_empty() && remove.is_empty() {
        return Err(ServiceError::invalid("set", "sets or removes no field"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in set {
        let name = FieldName::parse(&format!("set[{k:.64}]"), k)?;
        let value = fields::optional_text(&format!("set[{name}]"), v, fields::MAX_FIELD_VALUE)?;
        out.insert(name.into_string(), Some(value));
    }
    for (i, k) in remove.iter().enumerate() {
        let name = FieldName::parse(&format!("remove[{i}]"), k)?;
        if out.insert(name.into_string(), None).is_some() {
            return Err(ServiceError::invalid(
                format!("remove[{i}]"),
                "is also set by this update",
            ));
        }
    }
    Ok(out)
}

/// The session's clock, its entries checked against the configured regions.
fn seen(regions: &Regions, t: Option<&SessionToken>) -> Result<Option<SessionToken>, ServiceError> {
    let Some(t) = t else { return Ok(None) };
    if t.clock.len() > regions.all.len() {
        return Err(ServiceError::invalid(
            "session.clock",
            "has more entries than there are regions",
        ));
    }
    for r in t.clock.keys() {
        let field = format!("session.clock[{r:.16}]");
        let r = RegionName::parse(&field, r)?;
        if !regions.all.iter().any(|k| k == r.as_str()) {
            return Err(ServiceError::invalid(field, "is not a configured region"));
        }
    }
    if !t.region.is_empty() {
        RegionName::parse("session.region", &t.region)?;
    }
    Ok(Some(t.clone()))
}

fn clock_of(t: &SessionToken) -> VectorClock {
    VectorClock::from_entries(t.clock.iter().map(|(r, n)| (r.clone(), *n)))
}

fn wait(ms: u32) -> Result<Duration, ServiceError> {
    if ms > MAX_WAIT_MS {
        return Err(ServiceError::invalid(
            "wait_ms",
            format!("at most {MAX_WAIT_MS}"),
        ));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Waits for `region` to reach the session; refuses, naming where to go, if it does not.
async fn caught_up(
    region: &Region,
    user: &str,
    session: Option<&SessionToken>,
    wait: Duration,
) -> Result<Replica, ServiceError> {
    let Some(t) = session else {
        return region.profile(user).await;
    };
    let want = clock_of(t);
    match region.profile_at(user, &want, wait).await? {
        Ok(r) => Ok(r),
        Err(r) => {
            let behind: Vec<String> = want
                .entries()
                .filter(|(o, n)| r.clock.get(o) < *n)
                .map(|(o, n)| format!("{} of {o}'s", n - r.clock.get(o)))
                .collect();
            let go = if t.region.is_empty() || t.region == region.name {
                "retry later".to_owned()
            } else {
                format!("read from region {}, or retry later", t.region)
            };
            metrics::counter!("profile_reads_behind_session_total", "region" => region.name.clone())
                .increment(1);
            Err(ServiceError::FailedPrecondition(format!(
                "region {} has not yet applied what this session has seen of profile {user} \
                 (missing {} update(s)); {go}",
                region.name,
                behind.join(", ")
            )))
        }
    }
}

fn answer(user: String, region: &Region, r: &Replica, session: Option<&SessionToken>) -> Profile {
    let mut clock = session.map(clock_of).unwrap_or_default();
    clock.merge(&r.clock);
    Profile {
        user_id: user,
        fields: r
            .values()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        session: Some(SessionToken {
            clock: clock.entries().map(|(k, n)| (k.to_owned(), n)).collect(),
            region: region.name.clone(),
        }),
        region: region.name.clone(),
        waiting: u32::try_from(r.pending.len()).unwrap_or(u32::MAX),
    }
}

#[tonic::async_trait]
impl ProfileService for Profiles {
    async fn update_profile(
        &self,
        request: Request<UpdateProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let r = request.into_inner();
        let region = self.regions.get("region", &r.region)?;
        let user = fields::key("user_id", &r.user_id, fields::MAX_ID)?;
        let changes = changes(&r.set, &r.remove)?;
        let session = seen(&self.regions, r.session.as_ref())?;
        let wait = wait(r.wait_ms)?;
        caught_up(region, &user, session.as_ref(), wait).await?;
        let topic = &self.regions.profiles_topic;
        let replica = region
            .write_profile(&user, changes, |u| profile_updated(topic, &user, u))
            .await?;
        Ok(Response::new(answer(
            user,
            region,
            &replica,
            session.as_ref(),
        )))
    }

    async fn get_profile(
        &self,
        request: Request<GetProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let r = request.into_inner();
        let region = self.regions.get("region", &r.region)?;
        let user = fields::key("user_id", &r.user_id, fields::MAX_ID)?;
        let session = seen(&self.regions, r.session.as_ref())?;
        let wait = wait(r.wait_ms)?;
        let replica = caught_up(region, &user, session.as_ref(), wait).await?;
        Ok(Response::new(answer(
            user,
            region,
            &replica,
            session.as_ref(),
        )))
    }
}

/// Most views one call records.
pub const MAX_VIEWS: u32 = 1_000;

pub struct Stats {
    pub regions: Arc<Regions>,
    pub products: ProductStore,
}

impl Stats {
    /// The region and the SKU of a request, the SKU one the catalog has.
    async fn target<'a>(
        &'a self,
        region: &str,
        sku: &str,
    ) -> Result<(&'a Region, String), ServiceError> {
        let region = self.regions.get("region", region)?;
        let sku = fields::Sku::parse("sku", sku)?.into_string();
        if self.products.get(&sku).await?.is_none() {
            return Err(ServiceError::NotFound(format!("product {sku}")));
        }
        Ok((region, sku))
    }
}

fn stats(sku: String, region: &Region, c: &Counters) -> ProductStats {
    let (up, down) = c.likes.parts();
    let mut per_region: std::collections::HashMap<String, RegionCounts> = Default::default();
    for (r, n) in c.views.entries() {
        per_region.entry(r.to_owned()).or_default().views = n;
    }
    for (r, n) in up.entries() {
        per_region.entry(r.to_owned()).or_default().likes = n;
    }
    for (r, n) in down.entries() {
        per_region.entry(r.to_owned()).or_default().unlikes = n;
    }
    ProductStats {
        sku,
        region: region.name.clone(),
        views: c.views.value(),
        likes: c.likes.value(),
        per_region,
    }
}

#[tonic::async_trait]
impl ProductStatsService for Stats {
    async fn record_view(
        &self,
        request: Request<RecordViewRequest>,
    ) -> Result<Response<ProductStats>, Status> {
        let r = request.into_inner();
        let (region, sku) = self.target(&r.region, &r.sku).await?;
        if r.count > MAX_VIEWS {
            return Err(ServiceError::invalid("count", format!("at most {MAX_VIEWS}")).into());
        }
        let n = u64::from(r.count.max(1));
        let topic = &self.regions.counters_topic;
        let c = region.count(&sku, Change::Views(n), topic).await?;
        Ok(Response::new(stats(sku, region, &c)))
    }

    async fn like_product(
        &self,
        request: Request<LikeProductRequest>,
    ) -> Result<Response<ProductStats>, Status> {
        let r = request.into_inner();
        let (region, sku) = self.target(&r.region, &r.sku).await?;
        let topic = &self.regions.counters_topic;
        let c = region.count(&sku, Change::Like(r.like), topic).await?;
        Ok(Response::new(stats(sku, region, &c)))
    }

    async fn get_product_stats(
        &self,
        request: Request<GetProductStatsRequest>,
    ) -> Result<Response<ProductStats>, Status> {
        let r = request.into_inner();
        let (region, sku) = self.target(&r.region, &r.sku).await?;
        let c = region.counters(&sku).await?;
        Ok(Response::new(stats(sku, region, &c)))
    }
}
