//! The orchestrator: runs the [`crate::domain::saga`] machine against the database and Kafka.
//!
//! Every transition happens in one transaction: lock the saga row, apply the event, save the new
//! state and deadline, record the step timeline, and enqueue the next command (and the order's
//! own events) in the outbox. Three things drive it:
//!
//! - [`Orchestrator::start`], inside `PlaceOrder`'s transaction;
//! - [`Replies`], the inbox handler for the participants' events;
//! - [`Orchestrator::run_timeouts`], a loop that feeds `TimedOut` to sagas past their deadline
//!   (several instances share the work through `FOR UPDATE SKIP LOCKED`).
//!
//! A restarted service needs nothing special: the state, deadlines and unsent commands are all
//! in PostgreSQL, so replies and deadlines simply continue where they left off.

use std::time::Duration;

use chrono::Utc;
use prost::Message as _;
use shop_messaging::{
    NewEvent,
    envelope::EventEnvelope,
    inbox::{Handler, HandlerError},
    outbox,
    topics::{self, types},
};
use shop_proto::{
    common::Money,
    events::{
        CancelShipment, ChargePayment, CommitStock, CreateShipment, OrderCancelled, OrderCompleted,
        OrderPlaced, PaymentDeclined, RefundPayment, ReleaseStock, ReserveStock, ShipmentRefused,
        StockReservationFailed,
    },
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::saga::{Command, Event, Policy, Saga, State, Step},
    repository::{self, OrderRow},
};

/// Topic names with the deployment's prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    pub order_events: String,
    pub inventory_commands: String,
    pub payment_commands: String,
    pub shipping_commands: String,
    pub inventory_events: String,
    pub payment_events: String,
    pub shipping_events: String,
}

impl Topics {
    pub fn new(kafka: &shop_messaging::kafka::KafkaSettings) -> Self {
        Self {
            order_events: kafka.topic(topics::ORDER_EVENTS),
            inventory_commands: kafka.topic(topics::INVENTORY_COMMANDS),
            payment_commands: kafka.topic(topics::PAYMENT_COMMANDS),
            shipping_commands: kafka.topic(topics::SHIPPING_COMMANDS),
            inventory_events: kafka.topic(topics::INVENTORY_EVENTS),
            payment_events: kafka.topic(topics::PAYMENT_EVENTS),
            shipping_events: kafka.topic(topics::SHIPPING_EVENTS),
        }
    }

    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.order_events,
            &self.inventory_commands,
            &self.payment_commands,
            &self.shipping_commands,
            &self.inventory_events,
            &self.payment_events,
            &self.shipping_events,
        ]
    }
}

#[derive(Debug, Clone)]
pub struct Orchestrator {
    pub topics: Topics,
    pub policy: Policy,
}

impl Orchestrator {
    /// Starts the saga of a just-inserted order: `order.placed` and the first command.
    pub async fn start(
        &self,
        conn: &mut PgConnection,
        order: &OrderRow,
    ) -> Result<(), sqlx::Error> {
        let (saga, first) = Saga::start();
        repository::insert_saga(conn, order.order_id, &saga, Some(self.deadline(&saga))).await?;
        let placed = OrderPlaced {
            order_id: order.order_id.to_string(),
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            total: Some(total(order)),
            shipping_address: Some(order.shipping_address.clone()),
            payment_account_id: order.payment_account_id.clone(),
        };
        let placed = NewEvent::new(
            &self.topics.order_events,
            types::ORDER_PLACED,
            "order",
            order.order_id.to_string(),
            &placed,
        )
        .tenant(&order.tenant_id)
        .correlation(order.order_id.to_string());
        let command = self.command(order, first).caused_by(&placed.envelope);
        repository::step_sent(conn, order.order_id, step_name(first), saga.attempts).await?;
        outbox::enqueue_all(conn, &[placed, command]).await
    }

    /// Applies `event` to saga `id` in the caller's transaction. Returns the new state, or None
    /// when the saga does not exist (an event about someone else's order).
    pub async fn advance(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        event: &Event,
        cause: Option<&EventEnvelope>,
    ) -> Result<Option<Saga>, sqlx::Error> {
        let Some(row) = repository::lock_saga(conn, id).await? else {
            return Ok(None);
        };
        let t = row.saga.apply(event, &self.policy);
        if !t.changed {
            tracing::debug!(saga = %id, state = row.saga.state.as_str(), ?event, "event does not fit the saga's state, ignored");
            return Ok(Some(row.saga));
        }
        let order = repository::order(conn, id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        // Every state but the terminal ones has a command in flight, and so a deadline.
        let deadline = (!t.saga.state.is_terminal()).then(|| self.deadline(&t.saga));
        let error = t.step_update.as_ref().and_then(|(_, _, e)| e.clone());
        repository::save_saga(conn, id, &t.saga, deadline, error.as_deref()).await?;
        if let Some((step, status, error)) = &t.step_update {
            repository::step_status(conn, id, step, status, error.as_deref()).await?;
        }
        let mut events = Vec::new();
        for command in t.commands {
            repository::step_sent(conn, id, step_name(command), t.saga.attempts).await?;
            let mut e = self.command(&order, command);
            if let Some(cause) = cause {
                e = e.caused_by(cause);
            }
            events.push(e);
        }
        match t.saga.state {
            State::Completed => {
                repository::finish_order(conn, id, "COMPLETED", None).await?;
                let done = OrderCompleted {
                    order_id: id.to_string(),
                    total: Some(total(&order)),
                };
                events.push(self.order_event(&order, types::ORDER_COMPLETED, &done));
            }
            State::Cancelled => {
                let reason = t.saga.reason.clone().unwrap_or_default();
                repository::finish_order(conn, id, "CANCELLED", Some(&reason)).await?;
                let cancelled = OrderCancelled {
                    order_id: id.to_string(),
                    reason,
                };
                events.push(self.order_event(&order, types::ORDER_CANCELLED, &cancelled));
            }
            _ => {}
        }
        outbox::enqueue_all(conn, &events).await?;
        Ok(Some(t.saga))
    }

    fn deadline(&self, saga: &Saga) -> chrono::DateTime<Utc> {
        let timeout = saga
            .policy_for_in_flight(&self.policy)
            .map_or(self.policy.settle.timeout, |p| p.timeout);
        Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::seconds(30))
    }

    fn order_event(
        &self,
        order: &OrderRow,
        event_type: &str,
        payload: &impl prost::Message,
    ) -> NewEvent {
        NewEvent::new(
            &self.topics.order_events,
            event_type,
            "order",
            order.order_id.to_string(),
            payload,
        )
        .tenant(&order.tenant_id)
        .correlation(order.order_id.to_string())
    }

    /// The message that carries `command` for `order`.
    fn command(&self, order: &OrderRow, command: Command) -> NewEvent {
        let id = order.order_id.to_string();
        let t = &self.topics;
        let event = match command {
            Command::Do(Step::Reserve) => {
                let c = ReserveStock {
                    order_id: id.clone(),
                    items: order.items.clone(),
                };
                NewEvent::new(
                    &t.inventory_commands,
                    types::RESERVE_STOCK,
                    "order",
                    &id,
                    &c,
                )
            }
            Command::Do(Step::Charge) => {
                let c = ChargePayment {
                    order_id: id.clone(),
                    account_id: order.payment_account_id.clone(),
                    amount: Some(total(order)),
                };
                NewEvent::new(&t.payment_commands, types::CHARGE_PAYMENT, "order", &id, &c)
            }
            Command::Do(Step::Ship) => {
                let c = CreateShipment {
                    order_id: id.clone(),
                    address: Some(order.shipping_address.clone()),
                    items: order.items.clone(),
                };
                NewEvent::new(
                    &t.shipping_commands,
                    types::CREATE_SHIPMENT,
                    "order",
                    &id,
                    &c,
                )
            }
            Command::Do(Step::Commit) => {
                let c = CommitStock {
                    order_id: id.clone(),
                };
                NewEvent::new(&t.inventory_commands, types::COMMIT_STOCK, "order", &id, &c)
            }
            Command::Undo(Step::Reserve | Step::Commit) => {
                let c = ReleaseStock {
                    order_id: id.clone(),
                };
                NewEvent::new(
                    &t.inventory_commands,
                    types::RELEASE_STOCK,
                    "order",
                    &id,
                    &c,
                )
            }
            Command::Undo(Step::Charge) => {
                let c = RefundPayment {
                    order_id: id.clone(),
                };
                NewEvent::new(&t.payment_commands, types::REFUND_PAYMENT, "order", &id, &c)
            }
            Command::Undo(Step::Ship) => {
                let c = CancelShipment {
                    order_id: id.clone(),
                };
                NewEvent::new(
                    &t.shipping_commands,
                    types::CANCEL_SHIPMENT,
                    "order",
                    &id,
                    &c,
                )
            }
        };
        event.tenant(&order.tenant_id).correlation(&id)
    }

    /// Feeds `TimedOut` to every saga past its deadline, every `tick`, until `shutdown`.
    pub async fn run_timeouts(
        self,
        pool: PgPool,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            if let Err(e) = self.time_out_due(&pool).await {
                tracing::warn!(error = ?e, "saga timeout sweep failed");
            }
        }
    }

    /// One sweep: returns how many sagas timed out. Each saga is advanced in a transaction of
    /// its own, so one that fails (or loses a deadlock to a reply being applied) holds back no
    /// other; it is simply due again at the next sweep.
    pub async fn time_out_due(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let mut timed_out = 0;
        for _ in 0..100 {
            let mut tx = pool.begin().await?;
            let Some(id) = repository::due_sagas(&mut tx, 1).await?.into_iter().next() else {
                break;
            };
            match self.advance(&mut tx, id, &Event::TimedOut, None).await {
                Ok(_) => {
                    tx.commit().await?;
                    timed_out += 1;
                }
                Err(e) => {
                    tracing::warn!(saga = %id, error = %e, "saga timeout not applied, will retry");
                    break;
                }
            }
        }
        if timed_out > 0 {
            tracing::info!(count = timed_out, "sagas timed out");
            metrics::counter!("saga_timeouts_total").increment(timed_out as u64);
        }
        Ok(timed_out)
    }
}

fn step_name(command: Command) -> &'static str {
    match command {
        Command::Do(s) => s.name(),
        Command::Undo(s) => s.compensation_name(),
    }
}

fn total(order: &OrderRow) -> Money {
    Money {
        amount_minor: order.total_minor,
        currency: order.currency.clone(),
    }
}

/// The inbox handler for the participants' events: maps each reply to a saga [`Event`].
#[derive(Debug, Clone)]
pub struct Replies(pub Orchestrator);

impl Handler for Replies {
    async fn handle(&self, conn: &mut PgConnection, e: &EventEnvelope) -> Result<(), HandlerError> {
        let p = e.payload.as_slice();
        let event = match e.event_type.as_str() {
            types::STOCK_RESERVED => Event::Succeeded(Step::Reserve),
            types::STOCK_RESERVATION_FAILED => {
                Event::Failed(Step::Reserve, StockReservationFailed::decode(p)?.reason)
            }
            types::STOCK_RELEASED => Event::Compensated(Step::Reserve),
            types::STOCK_COMMITTED => Event::Succeeded(Step::Commit),
            types::PAYMENT_CHARGED => Event::Succeeded(Step::Charge),
            types::PAYMENT_DECLINED => {
                Event::Failed(Step::Charge, PaymentDeclined::decode(p)?.reason)
            }
            types::PAYMENT_REFUNDED => Event::Compensated(Step::Charge),
            types::SHIPMENT_CREATED => Event::Succeeded(Step::Ship),
            types::SHIPMENT_REFUSED => {
                Event::Failed(Step::Ship, ShipmentRefused::decode(p)?.reason)
            }
            types::SHIPMENT_CANCELLED => Event::Compensated(Step::Ship),
            // Stock levels and other facts are not replies.
            _ => return Ok(()),
        };
        let Ok(id) = Uuid::parse_str(&e.aggregate_id) else {
            return Ok(()); // not one of our orders
        };
        let before = std::time::Instant::now();
        if let Some(saga) = self.0.advance(conn, id, &event, Some(e)).await? {
            metrics::histogram!("saga_step_apply_seconds").record(before.elapsed().as_secs_f64());
            if saga.state.is_terminal() {
                metrics::counter!("sagas_finished_total", "state" => saga.state.as_str())
                    .increment(1);
            }
        }
        Ok(())
    }
}
