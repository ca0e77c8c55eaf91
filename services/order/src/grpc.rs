//! The gRPC adapter: protobuf in, validated domain values, repository and orchestrator, protobuf out.

use chrono::{DateTime, Utc};
use shop_core::{ServiceError, fields, grpc::page_size};
use shop_proto::order::{
    CompensateSagaRequest, Coordination, GetOrderAsOfRequest, GetOrderRequest, GetSagaRequest,
    ListOrdersRequest, ListOrdersResponse, ListSagasRequest, ListSagasResponse, Order, OrderStatus,
    PlaceOrderRequest, PlaceOrderResponse, RebuildReadModelsRequest, RebuildReadModelsResponse,
    RetrySagaRequest, Saga, SagaState, SagaStep, get_order_as_of_request::AsOf,
    order_service_server::OrderService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    admission::Admission,
    domain::{
        order::NewOrder,
        saga::{Event, State},
        stream::{self, Line},
    },
    eventstore::Until,
    orders::OrderStore,
    projection::{self, SummaryRow},
    repository::{self, SagaRow},
    saga::Orchestrator,
    twopc::Coordinator,
};

pub struct Orders {
    pool: PgPool,
    saga: Orchestrator,
    /// How long `GetOrder` waits for the read model to reach `min_stream_version` before it
    /// answers from the stream instead.
    read_your_writes_wait: std::time::Duration,
    /// The bound on sagas in flight (new orders past it are shed).
    admission: Admission,
    /// Orders placed with two-phase commit.
    twopc: Coordinator,
}

impl Orders {
    pub fn new(
        pool: PgPool,
        saga: Orchestrator,
        read_your_writes_wait: std::time::Duration,
        admission: Admission,
        twopc: Coordinator,
    ) -> Self {
        Self {
            pool,
            saga,
            read_your_writes_wait,
            admission,
            twopc,
        }
    }

    fn store(&self) -> OrderStore {
        self.saga.store
    }
}

/// Claims `new`'s idempotency key for a fresh order id (in the caller's transaction): the
/// order's id and whether it is new. The same key with another request is refused.
pub(crate) async fn claim(
    conn: &mut sqlx::PgConnection,
    new: &NewOrder,
) -> Result<(Uuid, bool), ServiceError> {
    let (id, fingerprint, created) = repository::claim_key(
        conn,
        &new.tenant_id,
        &new.idempotency_key,
        Uuid::now_v7(),
        &new.fingerprint,
    )
    .await?;
    if !created && fingerprint != new.fingerprint {
        return Err(ServiceError::FailedPrecondition(
            "idempotency_key was used before with a different request".into(),
        ));
    }
    Ok((id, created))
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn status_proto(s: &str) -> OrderStatus {
    match s {
        "COMPLETED" => OrderStatus::Completed,
        "CANCELLED" => OrderStatus::Cancelled,
        _ => OrderStatus::Pending,
    }
}

/// An order from the read model.
fn summary_proto(r: SummaryRow) -> Order {
    let lines: Vec<Line> = serde_json::from_value(r.items).unwrap_or_default();
    let placed = stream::Placed {
        items: lines,
        currency: r.currency.clone(),
        ..Default::default()
    };
    Order {
        order_id: r.order_id.to_string(),
        tenant_id: r.tenant_id,
        customer_id: r.customer_id,
        items: placed.line_items(),
        total: Some(shop_proto::common::Money {
            amount_minor: r.total_minor,
            currency: r.currency,
        }),
        status: status_proto(&r.status).into(),
        cancel_reason: r.cancel_reason.unwrap_or_default(),
        created_at: Some(ts(r.placed_at)),
        updated_at: Some(ts(r.updated_at)),
        stream_version: u64::try_from(r.version).unwrap_or(0),
        saga_state: State::parse(&r.saga_state)
            .map_or(SagaState::Unspecified, state_proto)
            .into(),
    }
}

/// An order from its stream (the aggregate).
fn aggregate_proto(o: &stream::Order) -> Order {
    let placed = o.placed.clone().unwrap_or_default();
    Order {
        order_id: o.id.to_string(),
        tenant_id: placed.tenant_id.clone(),
        customer_id: placed.customer_id.clone(),
        items: placed.line_items(),
        total: Some(placed.total()),
        status: status_proto(o.status().as_str()).into(),
        cancel_reason: o.cancel_reason.clone().unwrap_or_default(),
        created_at: o.placed_at.map(ts),
        updated_at: o.updated_at.map(ts),
        stream_version: o.version,
        saga_state: state_proto(o.saga.state).into(),
    }
}

fn state_proto(s: State) -> SagaState {
    match s {
        State::Started => SagaState::Started,
        State::InventoryReserved => SagaState::InventoryReserved,
        State::PaymentCharged => SagaState::PaymentCharged,
        State::ShipmentCreated => SagaState::ShipmentCreated,
        State::Completed => SagaState::Completed,
        State::Compensating => SagaState::Compensating,
        State::Cancelled => SagaState::Cancelled,
    }
}

fn state_from_proto(s: SagaState) -> Option<State> {
    Some(match s {
        SagaState::Unspecified => return None,
        SagaState::Started => State::Started,
        SagaState::InventoryReserved => State::InventoryReserved,
        SagaState::PaymentCharged => State::PaymentCharged,
        SagaState::ShipmentCreated => State::ShipmentCreated,
        SagaState::Completed => State::Completed,
        SagaState::Compensating => State::Compensating,
        SagaState::Cancelled => State::Cancelled,
    })
}

fn saga_proto(row: SagaRow, order: Option<&stream::Order>) -> Saga {
    let stuck = row.deadline.is_some_and(|d| d < Utc::now());
    let steps = order.map(|o| o.steps.clone()).unwrap_or_default();
    Saga {
        saga_id: row.saga_id.to_string(),
        order_id: row.saga_id.to_string(),
        state: state_proto(row.saga.state).into(),
        steps: steps
            .into_iter()
            .map(|s| SagaStep {
                name: s.name,
                status: s.status,
                attempts: s.attempts,
                started_at: Some(ts(s.started_at)),
                finished_at: s.finished_at.map(ts),
                last_error: s.last_error.unwrap_or_default(),
            })
            .collect(),
        deadline: row.deadline.map(ts),
        stuck,
        last_error: row.last_error.or(row.saga.reason).unwrap_or_default(),
        created_at: Some(ts(row.created_at)),
        updated_at: Some(ts(row.updated_at)),
    }
}

/// Cursor tokens are `<rfc3339>|<uuid>` of the last row of the previous page.
fn cursor(field: &str, token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, ServiceError> {
    if fields::page_token(field, token)?.is_empty() {
        return Ok(None);
    }
    let bad = || ServiceError::invalid(field, "is not a token this service issued");
    let (at, id) = token.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad())?)))
}

fn token(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}|{id}", at.to_rfc3339())
}

#[tonic::async_trait]
impl OrderService for Orders {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let new = NewOrder::parse(request.get_ref())?;
        if !self.admission.open() {
            // Shed, unless the key is taken: a retry of an accepted order starts nothing.
            let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
            let taken = repository::key_taken(&mut conn, &new.tenant_id, &new.idempotency_key)
                .await
                .map_err(ServiceError::from)?;
            if !taken {
                metrics::counter!("orders_shed_total").increment(1);
                return Err(ServiceError::ResourceExhausted(format!(
                    "{} orders in progress, at most {}: retry later",
                    self.admission.in_flight(),
                    self.admission.max()
                ))
                .into());
            }
        }
        let coordination = Coordination::try_from(request.get_ref().coordination)
            .map_err(|_| ServiceError::invalid("coordination", "is not a known coordination"))?;
        if coordination == Coordination::TwoPhaseCommit {
            let (order, created) = self.twopc.place(&new, request.get_ref()).await?;
            return Ok(Response::new(PlaceOrderResponse {
                order: Some(aggregate_proto(&order)),
                created,
                stream_version: order.version,
            }));
        }
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let (id, created) = claim(&mut tx, &new).await?;
        let order = if created {
            let order = self
                .saga
                .start(
                    &mut tx,
                    id,
                    &new,
                    coordination == Coordination::Choreography,
                )
                .await
                .map_err(ServiceError::from)?;
            metrics::counter!("orders_placed_total").increment(1);
            order
        } else {
            // The key's first request committed its stream with the key: it is there.
            self.store()
                .load(&mut tx, id)
                .await
                .map_err(ServiceError::from)?
                .ok_or_else(|| ServiceError::NotFound(format!("order {id}")))?
        };
        tx.commit().await.map_err(ServiceError::from)?;
        shop_messaging::wake::committed();
        if created {
            self.admission.admitted();
        }
        Ok(Response::new(PlaceOrderResponse {
            order: Some(aggregate_proto(&order)),
            created,
            stream_version: order.version,
        }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let r = request.get_ref();
        let id = fields::uuid("order_id", &r.order_id)?;
        let min = r.min_stream_version;
        let deadline = std::time::Instant::now() + self.read_your_writes_wait;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        loop {
            let row = projection::summary(&mut conn, id)
                .await
                .map_err(ServiceError::from)?;
            match row {
                Some(row) if u64::try_from(row.version).unwrap_or(0) >= min => {
                    return Ok(Response::new(summary_proto(row)));
                }
                // Behind the caller's own write (or not projected yet): wait a little.
                _ if std::time::Instant::now() < deadline && min > 0 => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                _ => break,
            }
        }
        // The read model is behind: the stream is the truth, answer from it.
        metrics::counter!("order_reads_from_stream_total").increment(1);
        let order = self
            .store()
            .load(&mut conn, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("order {id}")))?;
        Ok(Response::new(aggregate_proto(&order)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let customer = fields::key("customer_id", &r.customer_id, fields::MAX_ID)?;
        let page = r.page.unwrap_or_default();
        let limit = page_size(page.page_size, 20, 200);
        let after = cursor("page.page_token", &page.page_token)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let rows = projection::customer_orders(
            &mut conn,
            tenant.as_str(),
            &customer,
            after,
            i64::from(limit),
        )
        .await
        .map_err(ServiceError::from)?;
        let next_page_token = match rows.last() {
            Some(o) if rows.len() == limit as usize => token(o.placed_at, o.order_id),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: rows.into_iter().map(summary_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_saga(&self, request: Request<GetSagaRequest>) -> Result<Response<Saga>, Status> {
        let id = fields::uuid("saga_id", &request.get_ref().saga_id)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let row = repository::saga(&mut conn, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("saga {id}")))?;
        let order = self
            .store()
            .load(&mut conn, id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(saga_proto(row, order.as_ref())))
    }

    async fn list_sagas(
        &self,
        request: Request<ListSagasRequest>,
    ) -> Result<Response<ListSagasResponse>, Status> {
        let r = request.into_inner();
        let state = state_from_proto(r.state());
        let page = r.page.unwrap_or_default();
        let limit = page_size(page.page_size, 50, 500);
        let after = cursor("page.page_token", &page.page_token)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let rows = repository::sagas(&mut conn, state, r.stuck_only, after, i64::from(limit))
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match rows.last() {
            Some(s) if rows.len() == limit as usize => token(s.created_at, s.saga_id),
            _ => String::new(),
        };
        Ok(Response::new(ListSagasResponse {
            sagas: rows.into_iter().map(|s| saga_proto(s, None)).collect(),
            next_page_token,
        }))
    }

    async fn retry_saga(
        &self,
        request: Request<RetrySagaRequest>,
    ) -> Result<Response<Saga>, Status> {
        let id = fields::uuid("saga_id", &request.get_ref().saga_id)?;
        self.intervene(id, Event::RetryRequested).await
    }

    async fn compensate_saga(
        &self,
        request: Request<CompensateSagaRequest>,
    ) -> Result<Response<Saga>, Status> {
        let r = request.get_ref();
        let id = fields::uuid("saga_id", &r.saga_id)?;
        let reason = match fields::optional_text("reason", &r.reason, fields::MAX_REASON)?.as_str()
        {
            "" => "compensated by an operator".to_owned(),
            reason => format!("compensated by an operator: {reason}"),
        };
        self.intervene(id, Event::CompensateRequested(reason)).await
    }

    async fn get_order_as_of(
        &self,
        request: Request<GetOrderAsOfRequest>,
    ) -> Result<Response<Order>, Status> {
        let r = request.get_ref();
        let id = fields::uuid("order_id", &r.order_id)?;
        let until = match &r.as_of {
            Some(AsOf::Version(0)) => {
                return Err(ServiceError::invalid("version", "must be 1 or more").into());
            }
            Some(AsOf::Version(v)) if i64::try_from(*v).is_err() => {
                return Err(ServiceError::invalid("version", "is beyond any stream").into());
            }
            Some(AsOf::Version(v)) => Until::Version(*v),
            Some(AsOf::At(t)) => Until::Time(
                DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                    .ok_or_else(|| ServiceError::invalid("at", "is out of range"))?,
            ),
            None => return Err(ServiceError::invalid("as_of", "version or at is required").into()),
        };
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let order = self
            .store()
            .load_replayed(&mut conn, id, until)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("order {id} at that point")))?;
        Ok(Response::new(aggregate_proto(&order)))
    }

    async fn rebuild_read_models(
        &self,
        _request: Request<RebuildReadModelsRequest>,
    ) -> Result<Response<RebuildReadModelsResponse>, Status> {
        let r = projection::rebuild(&self.pool).await.map_err(|e| match e {
            projection::RebuildError::Busy => ServiceError::FailedPrecondition(e.to_string()),
            projection::RebuildError::Db(e) => ServiceError::from(e),
        })?;
        Ok(Response::new(RebuildReadModelsResponse {
            generation: u32::try_from(r.generation).unwrap_or(0),
            events_replayed: r.events,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

impl Orders {
    /// An operator's retry or compensation: refused unless the saga is in a state that allows it.
    async fn intervene(&self, id: Uuid, event: Event) -> Result<Response<Saga>, Status> {
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let before = repository::lock_saga(&mut tx, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("saga {id}")))?;
        let after = self
            .saga
            .advance(&mut tx, id, &event, None)
            .await
            .map_err(ServiceError::from)?;
        if let Some(order) = &after
            && order.placed.as_ref().is_some_and(|p| p.choreographed)
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "order {id} is choreographed: its participants act on each other's events, and \
                 there is no orchestrator to retry or compensate it"
            ))
            .into());
        }
        // The index row mirrors the saga: an unchanged saga means the request did not fit.
        if after.as_ref().is_none_or(|o| o.saga == before.saga) {
            return Err(ServiceError::FailedPrecondition(format!(
                "saga {id} is {} and cannot be {}",
                before.saga.state.as_str(),
                if matches!(event, Event::RetryRequested) {
                    "retried"
                } else {
                    "compensated"
                }
            ))
            .into());
        }
        let row = repository::saga(&mut tx, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound(id.to_string()))?;
        tx.commit().await.map_err(ServiceError::from)?;
        shop_messaging::wake::committed();
        Ok(Response::new(saga_proto(row, after.as_ref())))
    }
}
