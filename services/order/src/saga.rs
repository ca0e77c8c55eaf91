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
    NewEvent, choreography,
    envelope::EventEnvelope,
    inbox::{Handler, HandlerError},
    outbox,
    topics::{self, types},
};
use shop_proto::events::{
    CancelShipment, ChargePayment, CommitStock, CreateShipment, OrderCancelled, OrderCompleted,
    OrderPlaced, OrderSagaProgressed, PaymentDeclined, RefundPayment, ReleaseStock, ReserveStock,
    ShipmentRefused, StockReservationFailed,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{
        clock,
        order::NewOrder,
        saga::{Command, Event, Policy, Saga, SagaEvent, Step},
        stream::{Order, OrderEvent, Placed},
    },
    eventstore::Recorded,
    orders::{Meta, OrderStore, StoreError},
    repository,
};

/// Topic names with the deployment's prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    pub order_events: String,
    /// The saga's progress (`order.saga_progressed`), apart from `order_events` so that the
    /// services that only care about placed / completed / cancelled do not fetch it.
    pub order_saga: String,
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
            order_saga: kafka.topic(topics::ORDER_SAGA),
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
            &self.order_saga,
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
    pub store: OrderStore,
    /// Publish every saga decision as `order.saga_progressed` (nothing in the platform consumes
    /// it: four more messages per saga for whoever follows sagas closely). Off by default.
    pub publish_progress: bool,
}

/// How many times a transition reloads and decides again after losing an append race.
const CONFLICT_RETRIES: usize = 5;

/// How long the timeout sweep leaves a saga it could not advance before it tries again.
const SWEEP_RETRY: Duration = Duration::from_secs(10);

impl Orchestrator {
    /// Opens the stream of a new order (`order_placed`, version 1), indexes its saga, and
    /// enqueues `order.placed` and the first command, all in the caller's transaction.
    ///
    /// A `choreographed` order gets no command: its `order.placed` starts a choreography
    /// ([`shop_messaging::choreography`]) that the participants carry on by themselves, and
    /// this service only records what they did ([`Replies`]). No deadline either: nobody here
    /// times a choreography out.
    pub async fn start(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        new: &NewOrder,
        choreographed: bool,
    ) -> Result<Order, StoreError> {
        let mut order = Order::new(id);
        let meta = Meta {
            tenant_id: new.tenant_id.clone(),
            correlation_id: id.to_string(),
            causation_id: None,
        };
        let placed = Placed {
            choreographed,
            ..Placed::from_new(new)
        };
        self.store
            .append(conn, &mut order, &[OrderEvent::Placed(placed)], &meta)
            .await?;
        let event = self.placed_event(&order)?;
        let mut out = vec![event];
        if let Some(first) = order.saga.in_flight()
            && !choreographed
        {
            let command = self.command(&order, first).caused_by(&out[0].envelope);
            out.push(command);
        }
        let command_id = out.get(1).and_then(command_id);
        let deadline = (!choreographed).then(|| self.deadline(&order.saga));
        repository::insert_saga(conn, id, &order.saga, deadline, command_id).await?;
        outbox::enqueue_all(conn, &out).await?;
        Ok(order)
    }

    /// `order.placed` for a new order.
    fn placed_event(&self, order: &Order) -> Result<NewEvent, StoreError> {
        let placed = order.placed.clone().ok_or(sqlx::Error::RowNotFound)?;
        let event = OrderPlaced {
            order_id: order.id.to_string(),
            customer_id: placed.customer_id.clone(),
            items: placed.line_items(),
            total: Some(placed.total()),
            shipping_address: Some(placed.address()),
            payment_account_id: placed.payment_account_id.clone(),
        };
        let event = self.order_event(order, types::ORDER_PLACED, &event);
        Ok(if placed.choreographed {
            choreography::start(event)
        } else {
            event
        })
    }

    /// Records an order decided without the saga (by two-phase commit, `crate::twopc`): its
    /// stream (`order_placed`, then `facts`, which end it), its saga index row in the terminal
    /// state they lead to, and `order.placed` plus the terminal integration event, all in the
    /// caller's transaction. The stream and the index read as a saga that ran every step at
    /// once (or stopped before the first), so queries, projections and `shopctl check` treat
    /// the order like any other.
    pub async fn record_decided(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        new: &NewOrder,
        facts: Vec<OrderEvent>,
    ) -> Result<Order, StoreError> {
        let mut order = Order::new(id);
        let meta = Meta {
            tenant_id: new.tenant_id.clone(),
            correlation_id: id.to_string(),
            causation_id: None,
        };
        let mut events = vec![OrderEvent::Placed(Placed::from_new(new))];
        events.extend(facts);
        let recorded = self.store.append(conn, &mut order, &events, &meta).await?;
        let mut out = vec![self.placed_event(&order)?];
        out.extend(
            events
                .iter()
                .zip(&recorded)
                .filter_map(|(e, r)| self.integration_event(&order, e, r)),
        );
        repository::insert_saga(conn, id, &order.saga, None, None).await?;
        repository::save_saga(conn, id, &order.saga, None, None, None).await?;
        outbox::enqueue_all(conn, &out).await?;
        Ok(order)
    }

    /// Applies `event` to order `id`'s saga in the caller's transaction: load the order from
    /// its stream, decide, append the facts (optimistically, at the version loaded), update the
    /// saga index and enqueue the commands and integration events. Returns the order after it,
    /// or None when there is no such order (an event about someone else's order).
    ///
    /// The saga index row is locked first, so the reply consumer, the timeout sweep and an
    /// operator queue up on one order instead of deadlocking; the append's expected version is
    /// the safety net, and a conflict (a writer that did not take the lock) reloads and decides
    /// again.
    pub async fn advance(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        event: &Event,
        cause: Option<&EventEnvelope>,
    ) -> Result<Option<Order>, StoreError> {
        self.advance_through(conn, id, std::slice::from_ref(event), cause)
            .await
    }

    /// [`Orchestrator::advance`] by each of `events` that fits, in order ([`Saga::observe`]):
    /// what a choreographed order's event, which carries the events before it, records. A
    /// choreographed order takes only the participants' events: nobody here times it out,
    /// retries or compensates it (a deadline or an operator's request changes nothing), and no
    /// command is sent.
    pub async fn advance_through(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        events: &[Event],
        cause: Option<&EventEnvelope>,
    ) -> Result<Option<Order>, StoreError> {
        if repository::lock_saga(conn, id).await?.is_none() {
            return Ok(None);
        }
        let mut tries = 0;
        let (order, appended) = loop {
            let Some(mut order) = self.store.load(conn, id).await? else {
                return Ok(None);
            };
            let choreographed = order.placed.as_ref().is_some_and(|p| p.choreographed);
            let events: Vec<Event> = events
                .iter()
                .filter(|e| !choreographed || e.is_participants())
                .cloned()
                .collect();
            let facts = order.saga.observe(&events, &self.policy);
            if facts.is_empty() {
                tracing::debug!(saga = %id, state = order.saga.state.as_str(), ?events, "event does not fit the saga's state, ignored");
                return Ok(Some(order));
            }
            let events = order.events_for(facts);
            let placed = order.placed.clone().unwrap_or_default();
            let meta = Meta {
                tenant_id: placed.tenant_id,
                correlation_id: id.to_string(),
                causation_id: cause.map(|c| c.event_id.clone()),
            };
            match self.store.append(conn, &mut order, &events, &meta).await {
                Ok(recorded) => {
                    break (order, events.into_iter().zip(recorded).collect::<Vec<_>>());
                }
                Err(StoreError::Conflict(e)) if tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tracing::debug!(saga = %id, error = %e, "append conflict, reloading");
                }
                Err(e) => return Err(e),
            }
        };
        // Every state but the terminal ones has a command in flight, and so a deadline (but a
        // choreography's commands are the participants' own business).
        let orchestrated = order.placed.as_ref().is_some_and(|p| !p.choreographed);
        let deadline =
            (orchestrated && !order.saga.state.is_terminal()).then(|| self.deadline(&order.saga));
        let mut out = Vec::new();
        if let Some(command) = order.saga.in_flight().filter(|_| orchestrated) {
            let mut e = self.command(&order, command);
            if let Some(cause) = cause {
                e = e.caused_by(cause);
            }
            out.push(e);
        }
        let command = out.first().and_then(command_id);
        repository::save_saga(
            conn,
            id,
            &order.saga,
            deadline,
            command,
            order.last_error.as_deref(),
        )
        .await?;
        out.extend(
            appended
                .iter()
                .filter_map(|(e, recorded)| self.integration_event(&order, e, recorded)),
        );
        outbox::enqueue_all(conn, &out).await?;
        Ok(Some(order))
    }

    /// The Kafka message that publishes one stream event appended by a transition (`start`
    /// publishes `order_placed` itself).
    fn integration_event(&self, order: &Order, e: &OrderEvent, r: &Recorded) -> Option<NewEvent> {
        let id = order.id.to_string();
        Some(match e {
            OrderEvent::Placed(_) => return None,
            OrderEvent::Completed => {
                let done = OrderCompleted {
                    order_id: id,
                    total: order.placed.as_ref().map(Placed::total),
                    items: order
                        .placed
                        .as_ref()
                        .map(Placed::line_items)
                        .unwrap_or_default(),
                };
                self.order_event(order, types::ORDER_COMPLETED, &done)
            }
            OrderEvent::Cancelled { reason } => {
                let cancelled = OrderCancelled {
                    order_id: id,
                    reason: reason.clone(),
                };
                self.order_event(order, types::ORDER_CANCELLED, &cancelled)
            }
            OrderEvent::Saga(_) if !self.publish_progress => return None,
            OrderEvent::Saga(fact) => {
                let (step, reason) = match fact {
                    SagaEvent::StepDone { step } => (step.name().to_owned(), String::new()),
                    SagaEvent::Retried { cause, .. } => (
                        order
                            .in_flight_step()
                            .map(|s| s.name())
                            .unwrap_or_default()
                            .to_owned(),
                        cause.clone(),
                    ),
                    SagaEvent::CompensationStarted { step, reason, .. } => {
                        (step.name().to_owned(), reason.clone())
                    }
                    SagaEvent::Compensated { step } => {
                        (step.compensation_name().to_owned(), String::new())
                    }
                };
                let progressed = OrderSagaProgressed {
                    order_id: id,
                    stream_version: u64::try_from(r.version).unwrap_or(0),
                    fact: r.event_type.clone(),
                    step,
                    saga_state: order.saga.state.as_str().to_owned(),
                    reason,
                };
                NewEvent::new(
                    &self.topics.order_saga,
                    types::ORDER_SAGA_PROGRESSED,
                    "order",
                    order.id.to_string(),
                    &progressed,
                )
                .tenant(tenant(order))
                .correlation(order.id.to_string())
            }
        })
    }

    /// How long the command in flight may wait for its answer: the step's timeout, doubled for
    /// every retry before it, plus jitter ([`clock::wait`]).
    fn wait(&self, saga: &Saga) -> Duration {
        let timeout = saga
            .policy_for_in_flight(&self.policy)
            .map_or(self.policy.settle.timeout, |p| p.timeout);
        clock::wait(timeout, saga.attempts, fastrand::f64())
    }

    /// The first look at the command in flight: one wait from now (the sweep then moves it to
    /// one wait from the command's publication, see [`clock::due`]).
    fn deadline(&self, saga: &Saga) -> chrono::DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(self.wait(saga)).unwrap_or(chrono::Duration::seconds(30))
    }

    fn order_event(
        &self,
        order: &Order,
        event_type: &str,
        payload: &impl prost::Message,
    ) -> NewEvent {
        NewEvent::new(
            &self.topics.order_events,
            event_type,
            "order",
            order.id.to_string(),
            payload,
        )
        .tenant(tenant(order))
        .correlation(order.id.to_string())
    }

    /// The message that carries `command` for `order`.
    fn command(&self, order: &Order, command: Command) -> NewEvent {
        let id = order.id.to_string();
        let t = &self.topics;
        let placed = order.placed.clone().unwrap_or_default();
        let event = match command {
            Command::Do(Step::Reserve) => {
                let c = ReserveStock {
                    order_id: id.clone(),
                    items: placed.line_items(),
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
                    account_id: placed.payment_account_id.clone(),
                    amount: Some(placed.total()),
                };
                NewEvent::new(&t.payment_commands, types::CHARGE_PAYMENT, "order", &id, &c)
            }
            Command::Do(Step::Ship) => {
                let c = CreateShipment {
                    order_id: id.clone(),
                    address: Some(placed.address()),
                    items: placed.line_items(),
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
        event.tenant(&placed.tenant_id).correlation(&id)
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

    /// One sweep: returns how many sagas timed out. A saga whose command is still unsent, or was
    /// published less than one wait ago, only has its deadline moved ([`clock::due`]). Each saga is advanced in a transaction of
    /// its own, oldest deadline first. One that cannot be advanced (a stream that no longer
    /// decodes, a lost deadlock, no stream at all) is rolled back, gets its error recorded and
    /// its deadline pushed back by [`SWEEP_RETRY`], and the sweep goes on to the next: no saga
    /// holds back the others.
    pub async fn time_out_due(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let (mut timed_out, mut rescheduled) = (0, 0);
        for _ in 0..100 {
            let mut tx = pool.begin().await?;
            let Some(due) = repository::due_sagas(&mut tx, 1).await?.into_iter().next() else {
                break;
            };
            let (id, saga) = (due.saga_id, due.saga);
            // The step's clock starts when its command is published.
            let state = match due.command_id {
                Some(event_id) => repository::command_state(&mut tx, event_id).await?,
                None => clock::Command::Settled,
            };
            if let clock::Due::Later(at) = clock::due(Utc::now(), state, self.wait(&saga)) {
                repository::reschedule(&mut tx, id, at).await?;
                tx.commit().await?;
                rescheduled += 1;
                continue;
            }
            let error = match self.advance(&mut tx, id, &Event::TimedOut, None).await {
                Ok(Some(_)) => {
                    tx.commit().await?;
                    shop_messaging::wake::committed();
                    timed_out += 1;
                    continue;
                }
                Ok(None) => "the saga has no order stream".to_owned(),
                Err(e) => e.to_string(),
            };
            tx.rollback().await?;
            tracing::warn!(saga = %id, error = %error, retry_in = ?SWEEP_RETRY, "saga timeout not applied, deferred");
            metrics::counter!("saga_sweep_errors_total").increment(1);
            let until = Utc::now() + SWEEP_RETRY;
            repository::defer_saga(&mut *pool.acquire().await?, id, until, &error).await?;
        }
        if rescheduled > 0 {
            tracing::debug!(
                count = rescheduled,
                "saga deadlines moved to one wait after their command's publication"
            );
            metrics::counter!("saga_deadlines_moved_total").increment(rescheduled as u64);
        }
        if timed_out > 0 {
            tracing::info!(count = timed_out, "sagas timed out");
            metrics::counter!("saga_timeouts_total").increment(timed_out as u64);
        }
        Ok(timed_out)
    }
}

/// The outbox event id of a command message.
fn command_id(e: &NewEvent) -> Option<Uuid> {
    Uuid::parse_str(&e.envelope.event_id).ok()
}

fn tenant(order: &Order) -> String {
    order
        .placed
        .as_ref()
        .map(|p| p.tenant_id.clone())
        .unwrap_or_default()
}

/// The inbox handler for the participants' events: maps each reply to a saga [`Event`].
#[derive(Debug, Clone)]
pub struct Replies(pub Orchestrator);

impl Handler for Replies {
    async fn handle(&self, conn: &mut PgConnection, e: &EventEnvelope) -> Result<(), HandlerError> {
        // A choreographed order's event carries the events before it (after `order.placed`):
        // apply them all, in causal order, whichever topic delivered first.
        let events = match choreography::history(e) {
            Some(facts) => facts
                .iter()
                .skip(1)
                .map(|f| saga_event(&f.event_type, &f.payload))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?,
            None => saga_event(&e.event_type, &e.payload)?.into_iter().collect(),
        };
        if events.is_empty() {
            return Ok(()); // stock levels and other facts are not replies
        }
        let Ok(id) = Uuid::parse_str(&e.aggregate_id) else {
            return Ok(()); // not one of our orders
        };
        let before = std::time::Instant::now();
        if let Some(order) = self.0.advance_through(conn, id, &events, Some(e)).await? {
            metrics::histogram!("saga_step_apply_seconds").record(before.elapsed().as_secs_f64());
            if order.saga.state.is_terminal() {
                metrics::counter!("sagas_finished_total", "state" => order.saga.state.as_str())
                    .increment(1);
            }
        }
        Ok(())
    }
}

/// What a participant's event means to the saga; None for the facts that are not replies.
fn saga_event(event_type: &str, p: &[u8]) -> Result<Option<Event>, prost::DecodeError> {
    Ok(Some(match event_type {
        types::STOCK_RESERVED => Event::Succeeded(Step::Reserve),
        types::STOCK_RESERVATION_FAILED => {
            Event::Failed(Step::Reserve, StockReservationFailed::decode(p)?.reason)
        }
        types::STOCK_RELEASED => Event::Compensated(Step::Reserve),
        types::STOCK_COMMITTED => Event::Succeeded(Step::Commit),
        types::PAYMENT_CHARGED => Event::Succeeded(Step::Charge),
        types::PAYMENT_DECLINED => Event::Failed(Step::Charge, PaymentDeclined::decode(p)?.reason),
        types::PAYMENT_REFUNDED => Event::Compensated(Step::Charge),
        types::SHIPMENT_CREATED => Event::Succeeded(Step::Ship),
        types::SHIPMENT_REFUSED => Event::Failed(Step::Ship, ShipmentRefused::decode(p)?.reason),
        types::SHIPMENT_CANCELLED => Event::Compensated(Step::Ship),
        _ => return Ok(None),
    }))
}
