//! The gRPC queries. Every query reads `FINAL`, so redelivered events never count twice.

use clickhouse::Row;
use serde::Deserialize;
use shop_core::{ServiceError, fields};
use shop_proto::analytics::{
    FunnelRequest, FunnelResponse, Granularity, ProductSales, RevenueBucket, RevenueRequest,
    RevenueResponse, SagaDurationsRequest, SagaDurationsResponse, SagaOutcomesRequest,
    SagaOutcomesResponse, TimeRange, TopProductsRequest, TopProductsResponse,
    analytics_service_server::AnalyticsService,
};
use tonic::{Request, Response, Status};

use crate::store::Store;

pub struct Analytics {
    store: Store,
}

impl Analytics {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn internal(e: clickhouse::error::Error) -> Status {
    ServiceError::Internal(e.into()).into()
}

/// `[from, to)` in unix seconds; an absent bound is open.
fn range(r: Option<&TimeRange>) -> Result<(u32, u32), ServiceError> {
    let secs = |t: Option<&prost_types::Timestamp>, default: u32, field: &str| match t {
        None => Ok(default),
        Some(t) => u32::try_from(t.seconds)
            .map_err(|_| ServiceError::invalid(field, "is outside 1970..2106")),
    };
    let from = secs(r.and_then(|r| r.from.as_ref()), 0, "range.from")?;
    let to = secs(r.and_then(|r| r.to.as_ref()), u32::MAX, "range.to")?;
    if from > to {
        return Err(ServiceError::invalid("range", "from is after to"));
    }
    Ok((from, to))
}

#[tonic::async_trait]
impl AnalyticsService for Analytics {
    async fn revenue(
        &self,
        request: Request<RevenueRequest>,
    ) -> Result<Response<RevenueResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let (from, to) = range(r.range.as_ref())?;
        let bucket = match r.granularity() {
            Granularity::Hour => "toStartOfHour",
            Granularity::Day => "toStartOfDay",
            Granularity::Unspecified => {
                return Err(ServiceError::invalid("granularity", "must be HOUR or DAY").into());
            }
        };
        #[derive(Row, Deserialize)]
        struct B {
            start: u32,
            currency: String,
            revenue: i64,
            orders: u64,
        }
        let rows = self
            .store
            .client
            .query(&format!(
                "SELECT toUInt32({bucket}(occurred_at)) AS start, currency, sum(amount_minor) AS revenue, count() AS orders
                 FROM {}.events FINAL
                 WHERE event_type = 'order.completed' AND tenant_id = ? AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
                 GROUP BY start, currency ORDER BY start, currency",
                self.store.database
            ))
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_all::<B>()
            .await
            .map_err(internal)?;
        let currency = rows.first().map(|b| b.currency.clone()).unwrap_or_default();
        let buckets = rows
            .into_iter()
            .map(|b| RevenueBucket {
                start: Some(prost_types::Timestamp {
                    seconds: i64::from(b.start),
                    nanos: 0,
                }),
                revenue_minor: b.revenue,
                orders: b.orders,
            })
            .collect();
        Ok(Response::new(RevenueResponse { currency, buckets }))
    }

    async fn top_products(
        &self,
        request: Request<TopProductsRequest>,
    ) -> Result<Response<TopProductsResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let (from, to) = range(r.range.as_ref())?;
        let limit = shop_core::grpc::page_size(r.limit, 10, 1000);
        #[derive(Row, Deserialize)]
        struct P {
            sku: String,
            units: u64,
            revenue: i64,
        }
        let db = &self.store.database;
        let rows = self
            .store
            .client
            .query(&format!(
                "SELECT sku, sum(toUInt64(quantity)) AS units, sum(toInt64(quantity) * unit_minor) AS revenue
                 FROM {db}.order_lines FINAL
                 WHERE tenant_id = ? AND order_id IN (
                     SELECT order_id FROM {db}.events FINAL
                     WHERE event_type = 'order.completed' AND tenant_id = ?
                       AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?))
                 GROUP BY sku ORDER BY units DESC, sku LIMIT ?"
            ))
            .bind(tenant)
            .bind(tenant)
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_all::<P>()
            .await
            .map_err(internal)?;
        let products = rows
            .into_iter()
            .map(|p| ProductSales {
                sku: p.sku,
                units: p.units,
                revenue_minor: p.revenue,
            })
            .collect();
        Ok(Response::new(TopProductsResponse { products }))
    }

    async fn saga_outcomes(
        &self,
        request: Request<SagaOutcomesRequest>,
    ) -> Result<Response<SagaOutcomesResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let (from, to) = range(r.range.as_ref())?;
        #[derive(Row, Deserialize)]
        struct O {
            event_type: String,
            reason: String,
            n: u64,
        }
        let rows = self
            .store
            .client
            .query(&format!(
                "SELECT event_type, reason, count() AS n FROM {}.events FINAL
                 WHERE event_type IN ('order.completed', 'order.cancelled') AND tenant_id = ?
                   AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
                 GROUP BY event_type, reason",
                self.store.database
            ))
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_all::<O>()
            .await
            .map_err(internal)?;
        let mut out = SagaOutcomesResponse::default();
        for o in rows {
            if o.event_type == "order.completed" {
                out.completed += o.n;
            } else {
                *out.cancelled_by_reason.entry(o.reason).or_default() += o.n;
            }
        }
        Ok(Response::new(out))
    }

    async fn funnel(
        &self,
        request: Request<FunnelRequest>,
    ) -> Result<Response<FunnelResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let (from, to) = range(r.range.as_ref())?;
        #[derive(Row, Deserialize)]
        struct F {
            carts: u64,
            placed: u64,
            paid: u64,
            shipped: u64,
        }
        let f = self
            .store
            .client
            .query(&format!(
                "SELECT uniqExactIf(aggregate_id, event_type = 'cart.checked_out') AS carts,
                        uniqExactIf(order_id, event_type = 'order.placed') AS placed,
                        uniqExactIf(order_id, event_type = 'payment.charged') AS paid,
                        uniqExactIf(order_id, event_type = 'shipping.shipment_created') AS shipped
                 FROM {}.events FINAL
                 WHERE tenant_id = ? AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)",
                self.store.database
            ))
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_one::<F>()
            .await
            .map_err(internal)?;
        Ok(Response::new(FunnelResponse {
            carts_checked_out: f.carts,
            orders_placed: f.placed,
            orders_paid: f.paid,
            orders_shipped: f.shipped,
        }))
    }

    async fn saga_durations(
        &self,
        request: Request<SagaDurationsRequest>,
    ) -> Result<Response<SagaDurationsResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let (from, to) = range(r.range.as_ref())?;
        #[derive(Row, Deserialize)]
        struct D {
            p50: f64,
            p99: f64,
            n: u64,
        }
        let d = self
            .store
            .client
            .query(&format!(
                "SELECT toFloat64(quantileExact(0.5)(d)) AS p50, toFloat64(quantileExact(0.99)(d)) AS p99, count() AS n FROM (
                     SELECT order_id,
                            toInt64(maxIf(occurred_ms, event_type IN ('order.completed', 'order.cancelled')))
                              - toInt64(minIf(occurred_ms, event_type = 'order.placed')) AS d
                     FROM {}.events FINAL
                     WHERE tenant_id = ? AND event_type IN ('order.placed', 'order.completed', 'order.cancelled')
                       AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
                     GROUP BY order_id
                     HAVING countIf(event_type = 'order.placed') > 0
                        AND countIf(event_type IN ('order.completed', 'order.cancelled')) > 0)",
                self.store.database
            ))
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_one::<D>()
            .await
            .map_err(internal)?;
        let (p50, p99) = if d.n == 0 { (0.0, 0.0) } else { (d.p50, d.p99) };
        Ok(Response::new(SagaDurationsResponse {
            p50_ms: p50,
            p99_ms: p99,
            count: d.n,
        }))
    }
}
