//! The order's event stream and the aggregate rebuilt from it. No I/O.
//!
//! An order is the fold of its events: [`OrderEvent::Placed`] opens the stream and starts the
//! saga; every saga decision ([`SagaEvent`]) follows; [`OrderEvent::Completed`] or
//! [`OrderEvent::Cancelled`] closes it. Events are stored as JSON with a type and a schema
//! version; [`decode`] upcasts older schema versions to the current shape on read, so the fold
//! only ever sees current events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shop_proto::common::{Address, LineItem, Money};
use uuid::Uuid;

use super::{
    order::NewOrder,
    saga::{Command, Saga, SagaEvent, State, Step},
};

/// Bumped when [`Order`]'s serialized shape changes: older snapshots are then ignored (they are
/// a cache; the events are the truth).
pub const SNAPSHOT_SCHEMA: i32 = 1;

/// One line, in the order's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// Where to ship (mirrors `shop.common.v1.Address`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipTo {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

/// `order_placed`, schema version 2 (the current one). Version 1 (see [`upcast_placed_v1`])
/// predates tenants and named its fields differently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub tenant_id: String,
    pub customer_id: String,
    pub items: Vec<Line>,
    pub currency: String,
    pub total_minor: i64,
    pub shipping_address: ShipTo,
    pub payment_account_id: String,
    /// Carried out by choreography: the participants react to each other's events and this
    /// service only records what happened (absent in the orchestrated saga's streams).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub choreographed: bool,
}

impl Placed {
    pub fn from_new(o: &NewOrder) -> Self {
        let a = &o.shipping_address;
        Self {
            tenant_id: o.tenant_id.clone(),
            customer_id: o.customer_id.clone(),
            items: o
                .items
                .iter()
                .map(|i| Line {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price_minor: i.unit_price.as_ref().map_or(0, |p| p.amount_minor),
                })
                .collect(),
            currency: o.total.currency.clone(),
            total_minor: o.total.amount_minor,
            shipping_address: ShipTo {
                name: a.name.clone(),
                line1: a.line1.clone(),
                line2: a.line2.clone(),
                city: a.city.clone(),
                postal_code: a.postal_code.clone(),
                country: a.country.clone(),
            },
            payment_account_id: o.payment_account_id.clone(),
            choreographed: false,
        }
    }

    pub fn line_items(&self) -> Vec<LineItem> {
        self.items
            .iter()
            .map(|l| LineItem {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: Some(Money {
                    amount_minor: l.unit_price_minor,
                    currency: self.currency.clone(),
                }),
            })
            .collect()
    }

    pub fn total(&self) -> Money {
        Money {
            amount_minor: self.total_minor,
            currency: self.currency.clone(),
        }
    }

    pub fn address(&self) -> Address {
        let a = &self.shipping_address;
        Address {
            name: a.name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Placed(Placed),
    Saga(SagaEvent),
    Completed,
    Cancelled { reason: String },
}

/// An event's stored form: type, schema version, JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0} (schema version {1})")]
    Unknown(String, i32),
    #[error("event {0} v{1} does not parse: {2}")]
    Malformed(String, i32, serde_json::Error),
    #[error("event {0} v{1}: {2}")]
    Invalid(String, i32, String),
}

impl OrderEvent {
    pub const PLACED: &str = "order_placed";
    pub const COMPLETED: &str = "order_completed";
    pub const CANCELLED: &str = "order_cancelled";
    /// Saga facts are stored as `saga_<variant>`, e.g. `saga_step_done`.
    const SAGA_PREFIX: &str = "saga_";

    pub fn encode(&self) -> Encoded {
        let (event_type, payload) = match self {
            Self::Placed(p) => (Self::PLACED.to_owned(), serde_json::to_value(p)),
            Self::Completed => (Self::COMPLETED.to_owned(), Ok(serde_json::json!({}))),
            Self::Cancelled { reason } => (
                Self::CANCELLED.to_owned(),
                Ok(serde_json::json!({ "reason": reason })),
            ),
            Self::Saga(e) => {
                // Externally tagged: {"step_done": {...}} -> type saga_step_done, payload {...}.
                let tagged = serde_json::to_value(e).unwrap_or(Value::Null);
                match tagged {
                    Value::Object(map) => match map.into_iter().next() {
                        Some((variant, body)) => {
                            (format!("{}{variant}", Self::SAGA_PREFIX), Ok(body))
                        }
                        None => ("saga_unknown".to_owned(), Ok(Value::Null)),
                    },
                    _ => ("saga_unknown".to_owned(), Ok(Value::Null)),
                }
            }
        };
        Encoded {
            event_type,
            schema_version: if matches!(self, Self::Placed(_)) {
                2
            } else {
                1
            },
            // Serializing these plain structs cannot fail; Null would fail decode loudly.
            payload: payload.unwrap_or(Value::Null),
        }
    }
}

/// Reads a stored event, upcasting older schema versions to the current shape.
pub fn decode(
    event_type: &str,
    schema_version: i32,
    payload: Value,
) -> Result<OrderEvent, DecodeError> {
    let malformed = |e| DecodeError::Malformed(event_type.to_owned(), schema_version, e);
    match (event_type, schema_version) {
        (OrderEvent::PLACED, 1) => upcast_placed_v1(payload)
            .map(OrderEvent::Placed)
            .map_err(|e| DecodeError::Invalid(event_type.to_owned(), schema_version, e)),
        (OrderEvent::PLACED, 2) => serde_json::from_value(payload)
            .map(OrderEvent::Placed)
            .map_err(malformed),
        (OrderEvent::COMPLETED, 1) => Ok(OrderEvent::Completed),
        (OrderEvent::CANCELLED, 1) => {
            #[derive(Deserialize)]
            struct C {
                reason: String,
            }
            serde_json::from_value::<C>(payload)
                .map(|c| OrderEvent::Cancelled { reason: c.reason })
                .map_err(malformed)
        }
        (t, 1) if t.starts_with(OrderEvent::SAGA_PREFIX) => {
            let variant = &t[OrderEvent::SAGA_PREFIX.len()..];
            let tagged = serde_json::json!({ variant: payload });
            serde_json::from_value(tagged)
                .map(OrderEvent::Saga)
                .map_err(malformed)
        }
        (t, v) => Err(DecodeError::Unknown(t.to_owned(), v)),
    }
}

/// `order_placed` v1 -> v2. Version 1 was written before tenants existed (everything belonged
/// to tenant `default`), called the lines `lines` with `qty` and `price_cents`, the account
/// `account`, the address `address`, and stored no total (it was computed on read).
pub fn upcast_placed_v1(v1: Value) -> Result<Placed, String> {
    #[derive(Deserialize)]
    struct LineV1 {
        sku: String,
        qty: u32,
        price_cents: i64,
    }
    #[derive(Deserialize)]
    struct PlacedV1 {
        customer_id: String,
        lines: Vec<LineV1>,
        currency: String,
        address: ShipTo,
        account: String,
    }
    let old: PlacedV1 = serde_json::from_value(v1).map_err(|e| e.to_string())?;
    let mut total: i64 = 0;
    for l in &old.lines {
        total = l
            .price_cents
            .checked_mul(i64::from(l.qty))
            .and_then(|line| total.checked_add(line))
            .ok_or("the total overflows")?;
    }
    Ok(Placed {
        tenant_id: "default".into(),
        customer_id: old.customer_id,
        items: old
            .lines
            .into_iter()
            .map(|l| Line {
                sku: l.sku,
                quantity: l.qty,
                unit_price_minor: l.price_cents,
            })
            .collect(),
        currency: old.currency,
        total_minor: total,
        shipping_address: old.address,
        payment_account_id: old.account,
        choreographed: false,
    })
}

/// One step or compensation on the saga's timeline (for `GetSaga`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    pub name: String,
    pub status: String,
    pub attempts: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Completed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// The order aggregate: everything known about one order, rebuilt from its stream (or from a
/// snapshot of this struct plus the events after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    /// The version of the last event applied (0: nothing yet).
    pub version: u64,
    pub placed: Option<Placed>,
    pub saga: Saga,
    pub completed: bool,
    pub cancel_reason: Option<String>,
    pub steps: Vec<StepInfo>,
    pub last_error: Option<String>,
    pub placed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The name under which a command shows on the timeline.
pub fn command_name(c: Command) -> &'static str {
    match c {
        Command::Do(s) => s.name(),
        Command::Undo(s) => s.compensation_name(),
    }
}

impl Order {
    pub fn new(id: Uuid) -> Self {
        Self {
            id,
            version: 0,
            placed: None,
            saga: Saga::start().0,
            completed: false,
            cancel_reason: None,
            steps: vec![],
            last_error: None,
            placed_at: None,
            updated_at: None,
        }
    }

    pub fn status(&self) -> Status {
        if self.completed {
            Status::Completed
        } else if self.cancel_reason.is_some() {
            Status::Cancelled
        } else {
            Status::Pending
        }
    }

    /// Applies event number `version`, recorded at `at`.
    pub fn apply(&mut self, event: &OrderEvent, version: u64, at: DateTime<Utc>) {
        let before = self.saga.in_flight();
        match event {
            OrderEvent::Placed(p) => {
                self.placed = Some(p.clone());
                self.saga = Saga::start().0;
                self.placed_at = Some(at);
            }
            OrderEvent::Saga(fact) => {
                match fact {
                    SagaEvent::StepDone { step } => self.finish(step.name(), "done", None, at),
                    SagaEvent::Retried { attempt, cause } => {
                        if let Some(c) = self.saga.in_flight() {
                            let note = format!("{cause}, try {attempt}");
                            self.note(command_name(c), "running", Some(note), at);
                        }
                    }
                    SagaEvent::CompensationStarted {
                        step,
                        outcome,
                        reason,
                        ..
                    } => {
                        self.finish(step.name(), outcome, Some(reason.clone()), at);
                        self.last_error = Some(reason.clone());
                    }
                    SagaEvent::Compensated { step } => {
                        self.finish(step.compensation_name(), "done", None, at);
                    }
                }
                self.saga = self.saga.evolve(fact);
            }
            OrderEvent::Completed => self.completed = true,
            OrderEvent::Cancelled { reason } => self.cancel_reason = Some(reason.clone()),
        }
        // A command newly in flight (or sent again) starts or restarts its timeline entry.
        let after = self.saga.in_flight();
        let resent = matches!(event, OrderEvent::Saga(SagaEvent::Retried { .. }));
        if let Some(c) = after
            && (after != before || resent || matches!(event, OrderEvent::Placed(_)))
        {
            let attempts = self.saga.attempts;
            match self.steps.iter_mut().find(|s| s.name == command_name(c)) {
                Some(s) => {
                    s.status = "running".into();
                    s.attempts = attempts;
                    s.finished_at = None;
                }
                None => self.steps.push(StepInfo {
                    name: command_name(c).to_owned(),
                    status: "running".into(),
                    attempts,
                    started_at: at,
                    finished_at: None,
                    last_error: None,
                }),
            }
        }
        self.version = version;
        self.updated_at = Some(at);
    }

    fn finish(&mut self, name: &str, status: &str, error: Option<String>, at: DateTime<Utc>) {
        self.note(name, status, error, at);
        if let Some(s) = self.steps.iter_mut().find(|s| s.name == name) {
            s.finished_at = Some(at);
        }
    }

    fn note(&mut self, name: &str, status: &str, error: Option<String>, at: DateTime<Utc>) {
        match self.steps.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.status = status.to_owned();
                if error.is_some() {
                    s.last_error = error;
                }
            }
            None => self.steps.push(StepInfo {
                name: name.to_owned(),
                status: status.to_owned(),
                attempts: 1,
                started_at: at,
                finished_at: None,
                last_error: error,
            }),
        }
    }

    /// The stream events that record `facts` (in order), plus the order's own closing event when
    /// the saga ends with them.
    pub fn events_for(&self, facts: Vec<SagaEvent>) -> Vec<OrderEvent> {
        let mut saga = self.saga.clone();
        let mut events = Vec::new();
        for fact in facts {
            saga = saga.evolve(&fact);
            events.push(OrderEvent::Saga(fact));
            match saga.state {
                State::Completed => events.push(OrderEvent::Completed),
                State::Cancelled => events.push(OrderEvent::Cancelled {
                    reason: saga.reason.clone().unwrap_or_default(),
                }),
                _ => {}
            }
        }
        events
    }

    /// The step a saga is stuck on, for messages.
    pub fn in_flight_step(&self) -> Option<Step> {
        match self.saga.in_flight()? {
            Command::Do(s) | Command::Undo(s) => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::saga::{Event, Policy};
    use proptest::prelude::*;

    fn placed() -> Placed {
        Placed {
            tenant_id: "t".into(),
            customer_id: "c".into(),
            items: vec![Line {
                sku: "a".into(),
                quantity: 2,
                unit_price_minor: 250,
            }],
            currency: "EUR".into(),
            total_minor: 500,
            shipping_address: ShipTo {
                country: "DE".into(),
                ..ShipTo::default()
            },
            payment_account_id: "acc".into(),
            choreographed: false,
        }
    }

    /// The stream a saga writes when fed `inputs` (the inputs that do not fit are dropped,
    /// just as the orchestrator drops them): always a valid stream.
    fn stream_for(inputs: &[Event]) -> Vec<OrderEvent> {
        let policy = Policy::default();
        let mut order = Order::new(Uuid::nil());
        let mut stream = vec![OrderEvent::Placed(placed())];
        order.apply(&stream[0], 1, DateTime::UNIX_EPOCH);
        for input in inputs {
            let Some(fact) = order.saga.decide(input, &policy) else {
                continue;
            };
            for e in order.events_for(vec![fact]) {
                let v = order.version + 1;
                order.apply(
                    &e,
                    v,
                    DateTime::UNIX_EPOCH + chrono::Duration::seconds(v as i64),
                );
                stream.push(e);
            }
        }
        stream
    }

    fn replay(events: &[OrderEvent], from: Order) -> Order {
        let mut o = from;
        for e in events {
            let v = o.version + 1;
            o.apply(
                e,
                v,
                DateTime::UNIX_EPOCH + chrono::Duration::seconds(v as i64),
            );
        }
        o
    }

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        use Event::*;
        use Step::*;
        let stream = stream_for(&[
            Succeeded(Reserve),
            TimedOut,
            Failed(Charge, "declined".into()),
            Compensated(Reserve),
        ]);
        assert!(stream.len() >= 5);
        for e in &stream {
            let enc = e.encode();
            let back = decode(&enc.event_type, enc.schema_version, enc.payload.clone()).unwrap();
            assert_eq!(&back, e, "{enc:?}");
        }
        assert_eq!(stream[1].encode().event_type, "saga_step_done");
        assert!(
            matches!(stream.last(), Some(OrderEvent::Cancelled { reason }) if reason == "declined")
        );
    }

    #[test]
    fn a_v1_order_placed_reads_as_the_current_version() {
        let v1: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/order_placed_v1.json"))
                .unwrap();
        let e = decode("order_placed", 1, v1).unwrap();
        let OrderEvent::Placed(p) = e else {
            panic!("{e:?}")
        };
        assert_eq!(p.tenant_id, "default");
        assert_eq!(p.customer_id, "cust-7");
        assert_eq!(
            p.items,
            vec![
                Line {
                    sku: "mug".into(),
                    quantity: 2,
                    unit_price_minor: 1250
                },
                Line {
                    sku: "tea".into(),
                    quantity: 3,
                    unit_price_minor: 499
                },
            ]
        );
        assert_eq!(p.total_minor, 2 * 1250 + 3 * 499);
        assert_eq!(p.currency, "EUR");
        assert_eq!(p.payment_account_id, "acc-7");
        assert_eq!(p.shipping_address.country, "DE");
        // And an order replayed from it behaves like any other.
        let mut o = Order::new(Uuid::nil());
        o.apply(&OrderEvent::Placed(p), 1, DateTime::UNIX_EPOCH);
        assert_eq!(o.saga.state, State::Started);
        assert_eq!(o.steps[0].name, "reserve_stock");
    }

    #[test]
    fn unknown_and_malformed_events_are_errors_not_panics() {
        assert!(matches!(
            decode("order_exploded", 1, Value::Null),
            Err(DecodeError::Unknown(..))
        ));
        assert!(decode("order_placed", 2, serde_json::json!({"x": 1})).is_err());
        assert!(decode("order_placed", 1, serde_json::json!({"lines": 3})).is_err());
        assert!(decode("saga_nonsense", 1, serde_json::json!({})).is_err());
    }

    #[test]
    fn the_timeline_shows_each_step_its_tries_and_its_end() {
        use Event::*;
        use Step::*;
        let stream = stream_for(&[
            Succeeded(Reserve),
            TimedOut,
            TimedOut,
            Compensated(Reserve),
            Compensated(Charge),
        ]);
        let o = replay(&stream, Order::new(Uuid::nil()));
        assert_eq!(o.status(), Status::Cancelled);
        let by = |n: &str| o.steps.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(by("reserve_stock").status, "done");
        assert_eq!(by("charge_payment").status, "timed_out");
        assert_eq!(by("charge_payment").attempts, 2);
        assert_eq!(by("release_stock").status, "done");
        assert_eq!(by("refund_payment").status, "done");
        assert_eq!(
            o.cancel_reason.as_deref(),
            Some("charge_payment timed out after 2 tries")
        );
    }

    use crate::domain::saga::tests::event as input;

    proptest! {
        /// A snapshot (stored as JSON, read back) plus the events after it gives exactly the
        /// order a full replay gives, wherever the snapshot was taken.
        #[test]
        fn snapshot_plus_tail_equals_full_replay(inputs in proptest::collection::vec(input(), 0..60), cut in 0usize..100) {
            let stream = stream_for(&inputs);
            let full = replay(&stream, Order::new(Uuid::nil()));
            let cut = cut % (stream.len() + 1);
            let at_cut = replay(&stream[..cut], Order::new(Uuid::nil()));
            let stored = serde_json::to_value(&at_cut).unwrap();
            let snapshot: Order = serde_json::from_value(stored).unwrap();
            let from_snapshot = replay(&stream[cut..], snapshot);
            prop_assert_eq!(from_snapshot, full);
        }

        /// Every stream the saga writes decodes back to itself (type, version, payload).
        #[test]
        fn every_written_stream_decodes_back(inputs in proptest::collection::vec(input(), 0..40)) {
            for e in stream_for(&inputs) {
                let enc = e.encode();
                prop_assert_eq!(decode(&enc.event_type, enc.schema_version, enc.payload).unwrap(), e);
            }
        }
    }
}
