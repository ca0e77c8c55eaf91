//! The gRPC adapter: protobuf in, validated domain values, repository and orchestrator, protobuf out.

use chrono::{DateTime, Utc};
use shop_core::{
    ServiceError,
    grpc::{page_size, uuid_field},
};
use shop_proto::order::{
    CompensateSagaRequest, GetOrderRequest, GetSagaRequest, ListOrdersRequest, ListOrdersResponse,
    ListSagasRequest, ListSagasResponse, Order, OrderStatus, PlaceOrderRequest, PlaceOrderResponse,
    RetrySagaRequest, Saga, SagaState, SagaStep, order_service_server::OrderService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        order::NewOrder,
        saga::{Event, State},
    },
    repository::{self, OrderRow, SagaRow},
    saga::Orchestrator,
};

pub struct Orders {
    pool: PgPool,
    saga: Orchestrator,
}

impl Orders {
    pub fn new(pool: PgPool, saga: Orchestrator) -> Self {
        Self { pool, saga }
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn order_proto(o: OrderRow) -> Order {
    let status = match o.status.as_str() {
        "COMPLETED" => OrderStatus::Completed,
        "CANCELLED" => OrderStatus::Cancelled,
        _ => OrderStatus::Pending,
    };
    Order {
        order_id: o.order_id.to_string(),
        tenant_id: o.tenant_id,
        customer_id: o.customer_id,
        items: o.items,
        total: Some(shop_proto::common::Money {
            amount_minor: o.total_minor,
            currency: o.currency,
        }),
        status: status.into(),
        cancel_reason: o.cancel_reason.unwrap_or_default(),
        created_at: Some(ts(o.created_at)),
        updated_at: Some(ts(o.updated_at)),
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

fn saga_proto(row: SagaRow, steps: Vec<repository::StepRow>) -> Saga {
    let stuck = row.deadline.is_some_and(|d| d < Utc::now());
    Saga {
        saga_id: row.saga_id.to_string(),
        order_id: row.saga_id.to_string(),
        state: state_proto(row.saga.state).into(),
        steps: steps
            .into_iter()
            .map(
                |(name, status, attempts, started, finished, error)| SagaStep {
                    name,
                    status,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    started_at: Some(ts(started)),
                    finished_at: finished.map(ts),
                    last_error: error.unwrap_or_default(),
                },
            )
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
    if token.is_empty() {
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
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let (order, created) = repository::insert_order(&mut tx, Uuid::now_v7(), &new)
            .await
            .map_err(ServiceError::from)?;
        if !created && order.fingerprint != new.fingerprint {
            return Err(ServiceError::FailedPrecondition(
                "idempotency_key was used before with a different request".into(),
            )
            .into());
        }
        if created {
            self.saga
                .start(&mut tx, &order)
                .await
                .map_err(ServiceError::from)?;
            metrics::counter!("orders_placed_total").increment(1);
        }
        tx.commit().await.map_err(ServiceError::from)?;
        Ok(Response::new(PlaceOrderResponse {
            order: Some(order_proto(order)),
            created,
            stream_version: 0,
        }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = uuid_field("order_id", &request.get_ref().order_id)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let order = repository::order(&mut conn, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("order {id}")))?;
        Ok(Response::new(order_proto(order)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let tenant = shop_core::grpc::required("tenant_id", &r.tenant_id)?;
        let customer = shop_core::grpc::required("customer_id", &r.customer_id)?;
        let page = r.page.unwrap_or_default();
        let limit = page_size(page.page_size, 20, 200);
        let after = cursor("page.page_token", &page.page_token)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let rows = repository::orders_of(&mut conn, tenant, customer, after, i64::from(limit))
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match rows.last() {
            Some(o) if rows.len() == limit as usize => token(o.created_at, o.order_id),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: rows.into_iter().map(order_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_saga(&self, request: Request<GetSagaRequest>) -> Result<Response<Saga>, Status> {
        let id = uuid_field("saga_id", &request.get_ref().saga_id)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let row = repository::saga(&mut conn, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("saga {id}")))?;
        let steps = repository::steps(&mut conn, id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(saga_proto(row, steps)))
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
            sagas: rows.into_iter().map(|s| saga_proto(s, vec![])).collect(),
            next_page_token,
        }))
    }

    async fn retry_saga(
        &self,
        request: Request<RetrySagaRequest>,
    ) -> Result<Response<Saga>, Status> {
        let id = uuid_field("saga_id", &request.get_ref().saga_id)?;
        self.intervene(id, Event::RetryRequested).await
    }

    async fn compensate_saga(
        &self,
        request: Request<CompensateSagaRequest>,
    ) -> Result<Response<Saga>, Status> {
        let r = request.get_ref();
        let id = uuid_field("saga_id", &r.saga_id)?;
        let reason = match r.reason.trim() {
            "" => "compensated by an operator".to_owned(),
            reason => format!("compensated by an operator: {reason}"),
        };
        self.intervene(id, Event::CompensateRequested(reason)).await
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
        if after.as_ref() == Some(&before.saga) {
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
        let steps = repository::steps(&mut tx, id)
            .await
            .map_err(ServiceError::from)?;
        tx.commit().await.map_err(ServiceError::from)?;
        Ok(Response::new(saga_proto(row, steps)))
    }
}
