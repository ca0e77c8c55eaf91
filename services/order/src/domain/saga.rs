//! The order saga as a pure state machine: a state, an event (a participant's reply, a step
//! deadline passing, an operator's request), and the next state with the commands to send.
//! No I/O: the repository persists what this decides, in the same transaction as the outbox
//! rows that carry the commands.
//!
//! ```text
//!  STARTED ──reserved──► INVENTORY_RESERVED ──charged──► PAYMENT_CHARGED ──shipped──► SHIPMENT_CREATED ──committed──► COMPLETED
//!     │                        │                              │
//!     │ failed/timeout         │ declined/timeout             │ refused/timeout
//!     ▼                        ▼                              ▼
//!  COMPENSATING: run the compensations of the steps done, in reverse order, one at a time, then
//!  (after a timeout or an operator's abort) the compensation of the step in flight, which may or
//!  may not have happened ──all answered──► CANCELLED: everything is settled.
//! ```
//!
//! A reply that does not fit the current state (a duplicate, or late after a timeout) changes
//! nothing: the compensations already cover a step that timed out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A forward step and, in reverse, its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Reserve,
    Charge,
    Ship,
    /// Stock leaves the warehouse; cannot fail, retried until answered.
    Commit,
}

impl Step {
    pub const FORWARD: [Step; 4] = [Step::Reserve, Step::Charge, Step::Ship, Step::Commit];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve_stock",
            Self::Charge => "charge_payment",
            Self::Ship => "create_shipment",
            Self::Commit => "commit_stock",
        }
    }

    pub fn compensation_name(self) -> &'static str {
        match self {
            Self::Reserve => "release_stock",
            Self::Charge => "refund_payment",
            Self::Ship => "cancel_shipment",
            Self::Commit => "none",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::FORWARD.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Started,
    InventoryReserved,
    PaymentCharged,
    ShipmentCreated,
    Completed,
    Compensating,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::InventoryReserved => "INVENTORY_RESERVED",
            Self::PaymentCharged => "PAYMENT_CHARGED",
            Self::ShipmentCreated => "SHIPMENT_CREATED",
            Self::Completed => "COMPLETED",
            Self::Compensating => "COMPENSATING",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Started,
            Self::InventoryReserved,
            Self::PaymentCharged,
            Self::ShipmentCreated,
            Self::Completed,
            Self::Compensating,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// The forward step in flight in this state.
    fn step(self) -> Option<Step> {
        match self {
            Self::Started => Some(Step::Reserve),
            Self::InventoryReserved => Some(Step::Charge),
            Self::PaymentCharged => Some(Step::Ship),
            Self::ShipmentCreated => Some(Step::Commit),
            _ => None,
        }
    }

    /// The state once `step` succeeded.
    fn after(step: Step) -> Self {
        match step {
            Step::Reserve => Self::InventoryReserved,
            Step::Charge => Self::PaymentCharged,
            Step::Ship => Self::ShipmentCreated,
            Step::Commit => Self::Completed,
        }
    }
}

/// Timeout and tries per step (seed 001: reserve 30 s / 3, charge 60 s / 2, ship 30 s / 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    pub timeout: Duration,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub reserve: StepPolicy,
    pub charge: StepPolicy,
    pub ship: StepPolicy,
    /// Commit and compensations must eventually happen: they are retried every `timeout`
    /// without a limit (and the saga shows as stuck once past `max_attempts`).
    pub settle: StepPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        let p = |secs, max_attempts| StepPolicy {
            timeout: Duration::from_secs(secs),
            max_attempts,
        };
        Self {
            reserve: p(30, 3),
            charge: p(60, 2),
            ship: p(30, 3),
            settle: p(30, 5),
        }
    }
}

impl Policy {
    pub fn for_step(&self, step: Step) -> StepPolicy {
        match step {
            Step::Reserve => self.reserve,
            Step::Charge => self.charge,
            Step::Ship => self.ship,
            Step::Commit => self.settle,
        }
    }
}

/// What the saga is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub state: State,
    /// While compensating: compensations still to run, next first (reverse order of the steps).
    pub to_compensate: Vec<Step>,
    /// Tries of the command in flight (forward step or compensation).
    pub attempts: u32,
    /// Why it is being cancelled.
    pub reason: Option<String>,
}

/// A command for a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Do(Step),
    Undo(Step),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The participant did the step.
    Succeeded(Step),
    /// The participant refused the step (it did nothing).
    Failed(Step, String),
    /// The participant undid the step.
    Compensated(Step),
    /// The deadline of the command in flight passed.
    TimedOut,
    /// An operator asks to compensate now.
    CompensateRequested(String),
    /// An operator asks to send the command in flight again.
    RetryRequested,
}

impl Event {
    /// Whether a participant says this (the rest is the clock's or an operator's).
    pub fn is_participants(&self) -> bool {
        matches!(
            self,
            Self::Succeeded(_) | Self::Failed(..) | Self::Compensated(_)
        )
    }
}

/// A fact the saga records on the order's event stream: the decision taken on an [`Event`].
/// Replaying these with [`Saga::evolve`] rebuilds the saga exactly, whatever the policy is by
/// then (a timeout records whether it was retried or gave up, not just that it happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaEvent {
    /// The forward step in flight succeeded; the next one is sent.
    StepDone { step: Step },
    /// The command in flight is sent again: `attempt` is its try number now.
    Retried { attempt: u32, cause: String },
    /// Going forward stopped at `step` (`outcome`: failed, timed_out or aborted). `undo` are the
    /// compensations to run, next first; none means cancelled at once.
    CompensationStarted {
        step: Step,
        outcome: String,
        reason: String,
        undo: Vec<Step>,
    },
    /// The participant undid `step`.
    Compensated { step: Step },
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub saga: Saga,
    /// The facts to record (empty when the event did not fit: a duplicate or a late reply).
    pub events: Vec<SagaEvent>,
    /// To send now (the saga waits for each answer before the next).
    pub commands: Vec<Command>,
}

impl SagaEvent {
    /// The saga state this fact leads to, when the fact alone tells it (a retry keeps the
    /// state; a compensation answered keeps COMPENSATING unless it was the last, which the
    /// order's own `order_cancelled` event then says). Read models use it without a fold.
    pub fn state_after(&self) -> Option<State> {
        match self {
            Self::StepDone { step } => Some(State::after(*step)),
            Self::CompensationStarted { undo, .. } if undo.is_empty() => Some(State::Cancelled),
            Self::CompensationStarted { .. } => Some(State::Compensating),
            Self::Retried { .. } | Self::Compensated { .. } => None,
        }
    }
}

impl Transition {
    pub fn changed(&self) -> bool {
        !self.events.is_empty()
    }
}

impl Saga {
    pub fn start() -> (Self, Command) {
        (
            Self {
                state: State::Started,
                to_compensate: vec![],
                attempts: 1,
                reason: None,
            },
            Command::Do(Step::Reserve),
        )
    }

    /// The command in flight, if any (what a retry resends).
    pub fn in_flight(&self) -> Option<Command> {
        match self.state {
            State::Compensating => self.to_compensate.first().map(|s| Command::Undo(*s)),
            s => s.step().map(Command::Do),
        }
    }

    /// How long the command in flight may take, and whether it has used its tries.
    pub fn policy_for_in_flight(&self, policy: &Policy) -> Option<StepPolicy> {
        match self.in_flight()? {
            Command::Do(step) => Some(policy.for_step(step)),
            Command::Undo(_) => Some(policy.settle),
        }
    }

    /// Applies `event`: decides what it means ([`Saga::decide`]), then evolves by that decision.
    pub fn apply(&self, event: &Event, policy: &Policy) -> Transition {
        let Some(fact) = self.decide(event, policy) else {
            return Transition {
                saga: self.clone(),
                events: vec![],
                commands: vec![],
            };
        };
        let saga = self.evolve(&fact);
        Transition {
            // Every change leaves at most one command in flight, and it is sent now.
            commands: saga.in_flight().into_iter().collect(),
            saga,
            events: vec![fact],
        }
    }

    /// The state after a recorded fact. Pure and total: replaying a stream never fails.
    pub fn evolve(&self, fact: &SagaEvent) -> Saga {
        match fact {
            SagaEvent::StepDone { step } => Saga {
                state: State::after(*step),
                to_compensate: vec![],
                attempts: 1,
                reason: None,
            },
            SagaEvent::Retried { attempt, .. } => Saga {
                attempts: *attempt,
                ..self.clone()
            },
            SagaEvent::CompensationStarted { reason, undo, .. } => Saga {
                state: if undo.is_empty() {
                    State::Cancelled
                } else {
                    State::Compensating
                },
                attempts: u32::from(!undo.is_empty()),
                to_compensate: undo.clone(),
                reason: Some(reason.clone()),
            },
            SagaEvent::Compensated { .. } => {
                let rest = self.to_compensate.get(1..).unwrap_or_default().to_vec();
                Saga {
                    state: if rest.is_empty() {
                        State::Cancelled
                    } else {
                        State::Compensating
                    },
                    attempts: u32::from(!rest.is_empty()),
                    to_compensate: rest,
                    reason: self.reason.clone(),
                }
            }
        }
    }

    /// The facts `events` record, taken in order from this state: each that fits, evolving as
    /// it goes. One event is [`Saga::decide`]. Several are what an observer of a choreographed
    /// saga gets: an event that carries the events before it (its causes) may arrive before
    /// them, on another topic; applying the whole history in order takes the causes first, and
    /// the ones already seen do not fit again.
    pub fn observe(&self, events: &[Event], policy: &Policy) -> Vec<SagaEvent> {
        let mut saga = self.clone();
        let mut facts = Vec::new();
        for event in events {
            if let Some(fact) = saga.decide(event, policy) {
                saga = saga.evolve(&fact);
                facts.push(fact);
            }
        }
        facts
    }

    /// What `event` means in this state: the fact to record, or None when it does not fit.
    pub fn decide(&self, event: &Event, policy: &Policy) -> Option<SagaEvent> {
        match (self.state, event) {
            (s, _) if s.is_terminal() => None,

            // Forward progress.
            (s, Event::Succeeded(step)) if s.step() == Some(*step) => {
                Some(SagaEvent::StepDone { step: *step })
            }
            // Refused: the step did nothing, undo the ones before it.
            (s, Event::Failed(step, reason)) if s.step() == Some(*step) => {
                Some(SagaEvent::CompensationStarted {
                    step: *step,
                    outcome: "failed".into(),
                    reason: reason.clone(),
                    undo: done_before(*step),
                })
            }
            (s, Event::TimedOut) if s.step().is_some() => {
                let step = s.step()?;
                let p = policy.for_step(step);
                if step == Step::Commit || self.attempts < p.max_attempts {
                    // Resend; Commit cannot fail, so it is retried without limit.
                    return Some(SagaEvent::Retried {
                        attempt: self.attempts + 1,
                        cause: "timed out".into(),
                    });
                }
                // Out of tries: the step may or may not have happened. The steps done are undone
                // first, in reverse, so money and stock are not held hostage by the participant
                // that is not answering; the timed-out step's compensation comes last (answered
                // and remembered even if the step never happened) and is awaited too, so
                // CANCELLED always means everything is settled.
                let mut undo = done_before(step);
                undo.push(step);
                Some(SagaEvent::CompensationStarted {
                    step,
                    outcome: "timed_out".into(),
                    reason: format!("{} timed out after {} tries", step.name(), self.attempts),
                    undo,
                })
            }
            (s, Event::CompensateRequested(reason))
                if s.step().is_some() && s != State::ShipmentCreated =>
            {
                let step = s.step()?;
                let mut undo = done_before(step);
                undo.push(step);
                Some(SagaEvent::CompensationStarted {
                    step,
                    outcome: "aborted".into(),
                    reason: reason.clone(),
                    undo,
                })
            }

            // Compensation.
            (State::Compensating, Event::Compensated(step))
                if self.to_compensate.first() == Some(step) =>
            {
                Some(SagaEvent::Compensated { step: *step })
            }
            (State::Compensating, Event::TimedOut) if !self.to_compensate.is_empty() => {
                Some(SagaEvent::Retried {
                    attempt: self.attempts + 1,
                    cause: "timed out".into(),
                })
            }

            // An operator's retry: resend what is in flight, with a fresh deadline.
            (_, Event::RetryRequested) if self.in_flight().is_some() => Some(SagaEvent::Retried {
                attempt: self.attempts + 1,
                cause: "retried by an operator".into(),
            }),

            // Duplicates, late replies after a timeout, replies to another state: ignored.
            _ => None,
        }
    }
}

/// The steps completed before `step`, most recent first (the order they are undone in).
fn done_before(step: Step) -> Vec<Step> {
    let mut done: Vec<Step> = Step::FORWARD
        .into_iter()
        .take_while(|s| *s != step)
        .collect();
    done.retain(|s| *s != Step::Commit);
    done.reverse();
    done
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(events: &[Event]) -> (Saga, Vec<Command>) {
        let policy = Policy::default();
        let (mut saga, first) = Saga::start();
        let mut sent = vec![first];
        for e in events {
            let t = saga.apply(e, &policy);
            sent.extend(t.commands);
            saga = t.saga;
        }
        (saga, sent)
    }

    use Event::*;
    use Step::*;

    #[test]
    fn happy_path_reserves_charges_ships_commits_and_completes() {
        let (saga, sent) = run(&[
            Succeeded(Reserve),
            Succeeded(Charge),
            Succeeded(Ship),
            Succeeded(Commit),
        ]);
        assert_eq!(saga.state, State::Completed);
        assert_eq!(
            sent,
            vec![
                Command::Do(Reserve),
                Command::Do(Charge),
                Command::Do(Ship),
                Command::Do(Commit)
            ]
        );
    }

    #[test]
    fn out_of_stock_cancels_without_compensating_anything() {
        let (saga, sent) = run(&[Failed(Reserve, "insufficient stock".into())]);
        assert_eq!(saga.state, State::Cancelled);
        assert_eq!(saga.reason.as_deref(), Some("insufficient stock"));
        assert_eq!(sent, vec![Command::Do(Reserve)]);
    }

    #[test]
    fn a_shipping_refusal_refunds_then_releases() {
        let (saga, sent) = run(&[
            Succeeded(Reserve),
            Succeeded(Charge),
            Failed(Ship, "we do not ship to AQ".into()),
            Compensated(Charge),
            Compensated(Reserve),
        ]);
        assert_eq!(saga.state, State::Cancelled);
        assert_eq!(
            &sent[3..],
            &[Command::Undo(Charge), Command::Undo(Reserve)],
            "reverse order, one at a time"
        );
    }

    #[test]
    fn a_step_that_times_out_is_retried_then_compensated_including_itself() {
        // Charge allows 2 tries: the first timeout resends, the second compensates: the reserve
        // that was done first, then the charge that may have happened.
        let (saga, sent) = run(&[
            Succeeded(Reserve),
            TimedOut,
            TimedOut,
            Compensated(Reserve),
            Compensated(Charge),
        ]);
        assert_eq!(saga.state, State::Cancelled);
        assert!(
            saga.reason
                .as_deref()
                .is_some_and(|r| r.contains("charge_payment timed out after 2 tries"))
        );
        assert_eq!(
            sent,
            vec![
                Command::Do(Reserve),
                Command::Do(Charge),
                Command::Do(Charge),
                Command::Undo(Reserve),
                Command::Undo(Charge)
            ]
        );
    }

    #[test]
    fn late_and_duplicate_replies_change_nothing() {
        let policy = Policy::default();
        let (saga, _) = run(&[Succeeded(Reserve), TimedOut, TimedOut]); // compensating charge
        assert_eq!(saga.state, State::Compensating);
        let late = saga.apply(&Succeeded(Charge), &policy);
        assert!(!late.changed() && late.commands.is_empty());
        let (done, _) = run(&[
            Succeeded(Reserve),
            Succeeded(Charge),
            Succeeded(Ship),
            Succeeded(Commit),
        ]);
        assert!(
            !done.apply(&Failed(Ship, "x".into()), &policy).changed(),
            "terminal states absorb"
        );
        assert!(!done.apply(&Succeeded(Reserve), &policy).changed());
    }

    /// Any input, valid in the current state or not (shared with the stream's tests).
    pub(crate) fn event() -> impl Strategy<Value = Event> {
        let step = prop_oneof![Just(Reserve), Just(Charge), Just(Ship), Just(Commit)];
        prop_oneof![
            step.clone().prop_map(Succeeded),
            step.clone().prop_map(|s| Failed(s, "no".into())),
            step.prop_map(Compensated),
            Just(TimedOut),
            Just(RetryRequested),
            Just(CompensateRequested("operator".into())),
        ]
    }

    /// The event histories of a choreographed order, one per outcome.
    fn flows() -> Vec<Vec<Event>> {
        let why = || "no".to_owned();
        vec![
            vec![
                Succeeded(Reserve),
                Succeeded(Charge),
                Succeeded(Ship),
                Succeeded(Commit),
            ],
            vec![Failed(Reserve, why())],
            vec![
                Succeeded(Reserve),
                Failed(Charge, why()),
                Compensated(Reserve),
            ],
            vec![
                Succeeded(Reserve),
                Succeeded(Charge),
                Failed(Ship, why()),
                Compensated(Charge),
                Compensated(Reserve),
            ],
        ]
    }

    proptest! {
        /// An observer gets a choreographed order's events from three topics in any order, some
        /// twice; each carries the ones before it. Whatever the order, it records the facts in
        /// causal order (what it has recorded is always a prefix of the in-order record) and
        /// ends where the in-order run ends.
        #[test]
        fn an_observer_records_a_choreography_in_causal_order_whatever_the_delivery(
            flow in 0usize..4,
            deliveries in proptest::collection::vec(any::<prop::sample::Index>(), 1..12),
        ) {
            let policy = Policy::default();
            let history = &flows()[flow];
            let expected = Saga::start().0.observe(history, &policy);
            // Every event at least once, then the random ones (late, duplicated).
            let mut order: Vec<usize> = deliveries.iter().map(|i| i.index(history.len())).collect();
            order.extend(0..history.len());
            let (mut saga, mut recorded) = (Saga::start().0, Vec::new());
            for k in order {
                let facts = saga.observe(&history[..=k], &policy);
                for f in &facts {
                    saga = saga.evolve(f);
                }
                recorded.extend(facts);
                prop_assert_eq!(&recorded[..], &expected[..recorded.len()]);
            }
            prop_assert_eq!(recorded, expected);
            prop_assert!(saga.state.is_terminal());
        }
    }

    proptest! {
        /// Whatever arrives, in whatever order: a saga that ends cancelled has undone every step
        /// it did (in reverse order), and one that completes never undid anything.
        #[test]
        fn every_done_step_is_undone_before_cancelled_in_reverse_order(events in proptest::collection::vec(event(), 0..40)) {
            let policy = Policy::default();
            let (mut saga, _) = Saga::start();
            let mut done: Vec<Step> = vec![];
            let mut undone: Vec<Step> = vec![];
            for e in &events {
                let t = saga.apply(e, &policy);
                if t.changed() {
                    match e {
                        Succeeded(s) => done.push(*s),
                        Compensated(s) => undone.push(*s),
                        _ => {}
                    }
                }
                if saga.state.is_terminal() { prop_assert!(!t.changed()); }
                saga = t.saga;
            }
            match saga.state {
                State::Cancelled => {
                    let mut expected: Vec<Step> = done.iter().copied().filter(|s| *s != Commit).collect();
                    expected.reverse();
                    // A step that timed out is undone too although it never reported success.
                    let undone_done: Vec<Step> = undone.iter().copied().filter(|s| done.contains(s)).collect();
                    prop_assert_eq!(undone_done, expected);
                }
                State::Completed => prop_assert!(undone.is_empty()),
                _ => {}
            }
        }
    }
}
