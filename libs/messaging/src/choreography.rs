//! Choreography: a flow nobody directs. Each participant consumes the others' events and reacts
//! to the ones it has a part in; no commands are sent and no orchestrator keeps the state.
//!
//! The flow's first event (for the shop, `order.placed` of an order placed with
//! `COORDINATION_CHOREOGRAPHY`) is marked with [`start`]. From then on the mark travels by
//! itself: [`NewEvent::caused_by`] copies it onto whatever an event causes, as it does the trace.
//! A participant reacting to an event builds, with [`reaction`], the command an orchestrator
//! would have sent it, and runs its ordinary command handler on that ([`Reactions`]): the effect,
//! its idempotency and its reply are written once, for both styles. Only *who decides the next
//! step* differs.
//!
//! Every event of the flow carries the facts before it ([`Choreography::facts`], the first
//! event first), which gives two things without asking anyone:
//! - what the next participant needs (event-carried state transfer): payment reads the account
//!   and the amount from the first fact, shipping the address;
//! - causal order for an observer: one flow's events come on several topics, and a later one can
//!   arrive first (payment's `charged` before inventory's `reserved`). Each carries its causes,
//!   so an observer applies [`history`] in order and skips what it has seen already.

use prost::Message;
use shop_proto::events::OrderPlaced;
pub use shop_proto::events::{Choreography, Fact};
use sqlx::PgConnection;

use crate::{
    EventEnvelope, NewEvent,
    inbox::{Handler, HandlerError},
    topics::types,
};

/// The most facts an event may carry. The order flow has at most six; more is not a flow this
/// platform makes, and is refused rather than copied on and on.
pub const MAX_FACTS: usize = 16;

/// Marks `event` as the first of a choreographed flow.
pub fn start(mut event: NewEvent) -> NewEvent {
    event.envelope.choreography = Some(Choreography::default());
    event
}

/// Every fact of `event`'s flow up to and including `event` itself, the first first; None for
/// an event of no choreographed flow.
pub fn history(event: &EventEnvelope) -> Option<Vec<Fact>> {
    let mut facts = event.choreography.as_ref()?.facts.clone();
    facts.push(Fact {
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
    });
    Some(facts)
}

/// The order a choreographed order flow is about: its first fact, `order.placed`.
pub fn origin(event: &EventEnvelope) -> Result<OrderPlaced, HandlerError> {
    let facts = history(event)
        .ok_or_else(|| HandlerError::Permanent(anyhow::anyhow!("not a choreographed event")))?;
    match facts.first() {
        Some(f) if f.event_type == types::ORDER_PLACED => Ok(OrderPlaced::decode(&*f.payload)?),
        _ => Err(HandlerError::Permanent(anyhow::anyhow!(
            "a choreographed order flow starts with {}",
            types::ORDER_PLACED
        ))),
    }
}

/// The command a participant runs in reaction to `trigger`, as an orchestrator would have sent
/// it. It keeps the trigger's identity (its replies are caused by the trigger, and a
/// redelivered trigger is the same command) and carries the flow's facts through the trigger,
/// so every event it causes carries them too.
pub fn reaction(
    trigger: &EventEnvelope,
    event_type: &str,
    payload: Vec<u8>,
) -> Result<EventEnvelope, HandlerError> {
    let facts = history(trigger).unwrap_or_default();
    if facts.len() > MAX_FACTS {
        return Err(HandlerError::Permanent(anyhow::anyhow!(
            "{} facts in a choreographed flow, at most {MAX_FACTS}",
            facts.len()
        )));
    }
    Ok(EventEnvelope {
        event_type: event_type.to_owned(),
        payload,
        choreography: Some(Choreography { facts }),
        ..trigger.clone()
    })
}

/// What a participant does on one event of a choreographed order: the command (type and
/// encoded payload) it runs, given the event's type and the order.
pub type React = fn(trigger: &str, order: &OrderPlaced) -> Option<(&'static str, Vec<u8>)>;

/// A participant's part in choreographed orders, as an inbox handler over the other services'
/// events topics: on an event of a type in `triggers` that belongs to a choreographed flow,
/// `react` names the command and `commands` (the participant's command handler) runs it, in
/// the inbox's transaction. Every other event costs nothing ([`Handler::wants`]).
#[derive(Debug, Clone)]
pub struct Reactions<H> {
    triggers: &'static [&'static str],
    react: React,
    commands: H,
}

impl<H: Handler> Reactions<H> {
    pub fn new(triggers: &'static [&'static str], react: React, commands: H) -> Self {
        Self {
            triggers,
            react,
            commands,
        }
    }
}

impl<H: Handler> Handler for Reactions<H> {
    fn wants(&self, event: &EventEnvelope) -> bool {
        event.choreography.is_some() && self.triggers.contains(&event.event_type.as_str())
    }

    async fn handle(&self, conn: &mut PgConnection, e: &EventEnvelope) -> Result<(), HandlerError> {
        let order = origin(e)?;
        let Some((event_type, payload)) = (self.react)(&e.event_type, &order) else {
            return Ok(());
        };
        let command = reaction(e, event_type, payload)?;
        self.commands.handle(conn, &command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_proto::events::{SmokeTick, StockReserved};

    fn placed() -> NewEvent {
        let order = OrderPlaced {
            order_id: "o1".into(),
            payment_account_id: "acct".into(),
            ..Default::default()
        };
        start(NewEvent::new(
            "t",
            types::ORDER_PLACED,
            "order",
            "o1",
            &order,
        ))
    }

    #[test]
    fn the_flow_travels_with_causation_and_grows_by_each_reaction() {
        let placed = placed().envelope;
        assert_eq!(history(&placed).map(|f| f.len()), Some(1));
        let command = reaction(&placed, types::RESERVE_STOCK, vec![]).expect("reaction");
        assert_eq!(command.event_id, placed.event_id);
        let reply = NewEvent::new(
            "t",
            types::STOCK_RESERVED,
            "order",
            "o1",
            &StockReserved {
                order_id: "o1".into(),
            },
        )
        .caused_by(&command)
        .envelope;
        let facts = history(&reply).expect("choreographed");
        let kinds: Vec<&str> = facts.iter().map(|f| f.event_type.as_str()).collect();
        assert_eq!(kinds, [types::ORDER_PLACED, types::STOCK_RESERVED]);
        assert_eq!(origin(&reply).expect("origin").payment_account_id, "acct");
    }

    #[test]
    fn an_orchestrated_event_is_no_flow_and_a_flow_too_long_is_refused() {
        let plain = NewEvent::new("t", "x", "order", "o1", &SmokeTick { sequence: 1 }).envelope;
        assert!(history(&plain).is_none());
        assert!(origin(&plain).is_err());
        let mut long = placed().envelope;
        long.choreography = Some(Choreography {
            facts: vec![Fact::default(); MAX_FACTS],
        });
        assert!(matches!(
            reaction(&long, types::RESERVE_STOCK, vec![]),
            Err(HandlerError::Permanent(_))
        ));
        // A flow that does not start with the order is refused, not guessed at.
        long.choreography = Some(Choreography {
            facts: vec![Fact::default()],
        });
        assert!(matches!(origin(&long), Err(HandlerError::Permanent(_))));
    }
}
