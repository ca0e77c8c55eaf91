//! Two-phase commit: an order placed atomically across inventory, payment and shipping (each
//! a PostgreSQL database of its own) and the order database, instead of the saga. Chosen per
//! order (`PlaceOrderRequest.coordination`).
//!
//! ```text
//! PlaceOrder ─► tx{ idempotency key, log row 'preparing' }            (nothing prepared yet)
//!   phase one (in this order, each within prepare_timeout; the first no stops it):
//!     inventory.Prepare  reserve + commit the stock   ─► PREPARE TRANSACTION 'shop2pc:<id>:inventory'
//!     payment.Prepare    charge the account           ─► PREPARE TRANSACTION ...:payment
//!     shipping.Prepare   create the shipment          ─► PREPARE TRANSACTION ...:shipping
//!   decision: tx{ log row -> 'committing' (all yes) or 'aborting', the order's stream, saga
//!             index and integration events }            ◄── the commit point
//!   phase two: Commit (or Rollback) each participant, then log row -> 'committed' / 'aborted'
//! ```
//!
//! - **Presumed abort.** The log row exists before any prepare; a transaction still
//!   'preparing' after twice the prepare timeout was abandoned by its coordinator, and
//!   [`Coordinator::recover`] decides to roll it back (the same decision transaction, so a
//!   coordinator that comes back late finds it decided and follows).
//! - **Recovery** (at start and every `recovery_interval_ms`): finishes phase two of every
//!   decided transaction, rolls back abandoned ones, and asks every participant for the
//!   transactions it holds prepared (`ListPrepared`): one the log says committed is committed,
//!   any other (aborted, unknown) rolled back. So a coordinator killed at any point leaves
//!   nothing prepared once recovery has run, and every order either happened everywhere or
//!   nowhere.
//! - **Blocking.** A participant that voted yes waits for the decision holding its row locks
//!   (the stock rows, the account): while the coordinator is away they stay locked, and other
//!   orders of the same SKUs or account wait. That is the price of atomicity, measured by
//!   `shopctl compare`.

pub mod log;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use shop_core::ServiceError;
use shop_messaging::twopc::{GID_PREFIX, gid};
use shop_proto::{
    events::{ChargePayment, CreateShipment, ReserveStock},
    order::PlaceOrderRequest,
    twopc::{
        Decision, PrepareRequest, Vote, participant_client::ParticipantClient,
        prepare_request::Work,
    },
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    domain::{
        order::NewOrder,
        saga::{SagaEvent, Step},
        stream::{Order, OrderEvent},
    },
    saga::Orchestrator,
};
use log::LogState;

/// `SHOP__TWOPC__*`, and the participants' addresses (`SHOP__INVENTORY_URL`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TwoPcSettings {
    /// How long phase one waits for each vote before it decides to roll back.
    pub prepare_timeout_ms: u64,
    /// How often recovery looks for transactions left undecided or unfinished.
    pub recovery_interval_ms: u64,
    /// A fault hook for tests: the coordinator stops at this point of every 2PC order, as if
    /// killed there: `before_prepare`, `after_first_vote`, `after_decision`, `during_commit`.
    pub crash_at: String,
}

impl Default for TwoPcSettings {
    fn default() -> Self {
        Self {
            prepare_timeout_ms: 5_000,
            recovery_interval_ms: 1_000,
            crash_at: String::new(),
        }
    }
}

/// Where the fault hook stops the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    BeforePrepare,
    AfterFirstVote,
    AfterDecision,
    DuringCommit,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 4] = [
        Self::BeforePrepare,
        Self::AfterFirstVote,
        Self::AfterDecision,
        Self::DuringCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::BeforePrepare => "before_prepare",
            Self::AfterFirstVote => "after_first_vote",
            Self::AfterDecision => "after_decision",
            Self::DuringCommit => "during_commit",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Option<Self>> {
        if s.is_empty() {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("SHOP__TWOPC__CRASH_AT: unknown point {s}"))
    }
}

/// The participants, in the order their steps run in the saga.
const PARTICIPANTS: [(&str, Step); 3] = [
    ("inventory", Step::Reserve),
    ("payment", Step::Charge),
    ("shipping", Step::Ship),
];

#[derive(Clone)]
pub struct Coordinator {
    pub pool: PgPool,
    pub saga: Orchestrator,
    /// inventory, payment, shipping.
    pub clients: [ParticipantClient<Channel>; 3],
    pub prepare_timeout: Duration,
    pub crash_at: Option<CrashPoint>,
}

/// Why phase one ends in a rollback: the first participant that did not vote yes.
struct Refusal {
    step: Step,
    outcome: &'static str,
    reason: String,
}

fn crashed(at: CrashPoint) -> ServiceError {
    ServiceError::Unavailable(format!(
        "the coordinator stopped at {} (fault hook); recovery finishes the order",
        at.name()
    ))
}

impl Coordinator {
    fn stop_at(&self, at: CrashPoint) -> Result<(), ServiceError> {
        if self.crash_at == Some(at) {
            return Err(crashed(at));
        }
        Ok(())
    }

    /// Places `new` with two-phase commit. Returns the order and whether this call created it
    /// (a retry with the same key gets the first call's order, once decided).
    pub async fn place(
        &self,
        new: &NewOrder,
        request: &PlaceOrderRequest,
    ) -> Result<(Order, bool), ServiceError> {
        let mut tx = self.pool.begin().await?;
        let (id, created) = crate::grpc::claim(&mut tx, new).await?;
        if !created {
            tx.commit().await?;
            return Ok((self.decided(id).await?, false));
        }
        log::begin(&mut tx, id, &new.tenant_id, &request.encode_to_vec()).await?;
        tx.commit().await?;
        self.stop_at(CrashPoint::BeforePrepare)?;
        let refusal = self.phase_one(id, new).await?;
        let commit = refusal.is_none();
        let order = match self.decide(id, new, refusal).await? {
            Some(order) => order,
            // Recovery decided first (this call took too long): its decision stands.
            None => return Ok((self.decided(id).await?, true)),
        };
        self.stop_at(CrashPoint::AfterDecision)?;
        // The outcome is decided: the caller gets it once phase two is done, or after one
        // prepare timeout if a participant is slow to take the decision (phase two goes on,
        // and recovery finishes what it cannot).
        let two = self.clone();
        let phase_two = tokio::spawn(async move { two.phase_two(id, commit).await });
        match tokio::time::timeout(self.prepare_timeout, phase_two).await {
            Ok(Ok(Err(e))) if self.crash_at.is_some() => return Err(e),
            Ok(Ok(Err(e))) => {
                tracing::warn!(order_id = %id, error = %e, "phase two left to recovery")
            }
            _ => {}
        }
        Ok((order, true))
    }

    /// The order of a transaction already decided; a conflict while it is not.
    async fn decided(&self, id: Uuid) -> Result<Order, ServiceError> {
        let mut conn = self.pool.acquire().await?;
        match self.saga.store.load(&mut conn, id).await? {
            Some(order) => Ok(order),
            None => Err(ServiceError::Conflict(format!(
                "order {id} is being decided (two-phase commit); retry"
            ))),
        }
    }

    fn prepare_request(id: Uuid, new: &NewOrder, participant: &str) -> PrepareRequest {
        let order_id = id.to_string();
        let work = match participant {
            "inventory" => Work::ReserveStock(ReserveStock {
                order_id: order_id.clone(),
                items: new.items.clone(),
            }),
            "payment" => Work::ChargePayment(ChargePayment {
                order_id: order_id.clone(),
                account_id: new.payment_account_id.clone(),
                amount: Some(new.total.clone()),
            }),
            _ => Work::CreateShipment(CreateShipment {
                order_id: order_id.clone(),
                address: Some(new.shipping_address.clone()),
                items: new.items.clone(),
            }),
        };
        PrepareRequest {
            gid: gid(&order_id, participant),
            tenant_id: new.tenant_id.clone(),
            work: Some(work),
        }
    }

    /// Asks the participants to prepare, one after the other in a fixed order (inventory,
    /// payment, shipping), stopping at the first that does not vote yes; `None` when all did.
    ///
    /// One after the other, not at once: a participant that voted yes holds its rows until the
    /// decision, so two orders asking at once could each hold what the other waits for
    /// (order A's stock row at inventory, order B's account at payment) in a cycle no database
    /// sees: a distributed deadlock, broken only by timeouts. Asked in one global order, an
    /// order never holds a later participant's rows while it waits for an earlier one's. It
    /// costs a round trip per participant; `lock_timeout` at the participants is the safety net.
    async fn phase_one(&self, id: Uuid, new: &NewOrder) -> Result<Option<Refusal>, ServiceError> {
        for (i, (&(name, step), client)) in PARTICIPANTS.iter().zip(&self.clients).enumerate() {
            let request = Self::prepare_request(id, new, name);
            let vote =
                tokio::time::timeout(self.prepare_timeout, client.clone().prepare(request)).await;
            if i == 0 {
                // Killed here: the first participant (may have) prepared, the others not asked.
                self.stop_at(CrashPoint::AfterFirstVote)?;
            }
            let (outcome, reason) = match vote {
                Ok(Ok(v)) if v.get_ref().yes => continue,
                Ok(Ok(v)) => {
                    let Vote { reason, .. } = v.into_inner();
                    ("refused", reason)
                }
                Ok(Err(status)) => ("failed", format!("{name}: {}", status.message())),
                Err(_) => (
                    "timed_out",
                    format!("{name} did not vote within {:?}", self.prepare_timeout),
                ),
            };
            return Ok(Some(Refusal {
                step,
                outcome,
                reason,
            }));
        }
        Ok(None)
    }

    /// The decision: the log row from 'preparing' to its outcome, and the order's events, in
    /// one transaction. `None` if the row was decided already (by recovery).
    async fn decide(
        &self,
        id: Uuid,
        new: &NewOrder,
        refusal: Option<Refusal>,
    ) -> Result<Option<Order>, ServiceError> {
        let mut tx = self.pool.begin().await?;
        match log::lock(&mut tx, id).await? {
            Some(row) if row.state == LogState::Preparing => {}
            _ => return Ok(None),
        }
        let commit = refusal.is_none();
        let facts = match &refusal {
            None => Step::FORWARD
                .into_iter()
                .map(|step| OrderEvent::Saga(SagaEvent::StepDone { step }))
                .chain([OrderEvent::Completed])
                .collect(),
            Some(r) => vec![
                OrderEvent::Saga(SagaEvent::CompensationStarted {
                    step: r.step,
                    outcome: r.outcome.to_owned(),
                    reason: r.reason.clone(),
                    undo: vec![],
                }),
                OrderEvent::Cancelled {
                    reason: r.reason.clone(),
                },
            ],
        };
        let order = self.saga.record_decided(&mut tx, id, new, facts).await?;
        log::decide(
            &mut tx,
            id,
            commit,
            refusal.as_ref().map(|r| r.reason.as_str()),
        )
        .await?;
        tx.commit().await?;
        shop_messaging::wake::committed();
        metrics::counter!("twopc_decisions_total", "decision" => if commit { "commit" } else { "rollback" })
            .increment(1);
        Ok(Some(order))
    }

    /// Commits (or rolls back) every participant, one after the other, then ends the log row.
    /// A participant that cannot be reached now is left to recovery.
    async fn phase_two(&self, id: Uuid, commit: bool) -> Result<(), ServiceError> {
        let order_id = id.to_string();
        let mut all = true;
        for (i, (&(name, _), client)) in PARTICIPANTS.iter().zip(&self.clients).enumerate() {
            if i == 1 {
                // Killed here: the first participant has its decision, the others not yet.
                self.stop_at(CrashPoint::DuringCommit)?;
            }
            if let Err(e) = finish(client.clone(), &gid(&order_id, name), commit).await {
                tracing::warn!(order_id, participant = name, error = %e, "phase two left to recovery");
                all = false;
            }
        }
        if all {
            let mut conn = self.pool.acquire().await?;
            log::end(&mut conn, id, commit).await?;
        }
        Ok(())
    }

    /// One round of recovery; returns how many transactions it moved on.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let abandoned = chrono::Utc::now()
            - chrono::Duration::from_std(self.prepare_timeout * 2).unwrap_or_default();
        let rows = {
            let mut conn = self.pool.acquire().await?;
            log::unfinished(&mut conn, abandoned, 100).await?
        };
        let mut moved = 0;
        for row in rows {
            let commit = match row.state.decision() {
                Some(commit) => commit,
                None => {
                    // Abandoned before its decision: presumed abort.
                    let request = PlaceOrderRequest::decode(row.request.as_slice())?;
                    let new = NewOrder::parse(&request)?;
                    let refusal = Refusal {
                        step: Step::Reserve,
                        outcome: "aborted",
                        reason: "the coordinator did not decide in time: rolled back".into(),
                    };
                    if self
                        .decide(row.order_id, &new, Some(refusal))
                        .await?
                        .is_none()
                    {
                        continue;
                    }
                    false
                }
            };
            self.phase_two(row.order_id, commit).await?;
            metrics::counter!("twopc_recovered_total").increment(1);
            moved += 1;
        }
        moved += self.resolve_orphans(abandoned).await?;
        Ok(moved)
    }

    /// Transactions a participant holds prepared that phase two will not reach (a prepare that
    /// arrived after its transaction was rolled back): committed if the log says commit,
    /// rolled back if it says abort. A gid this log has no row for is left alone: the log row
    /// comes before any prepare, so it belongs to another coordinator.
    async fn resolve_orphans(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<usize> {
        let mut moved = 0;
        for (client, (name, _)) in self.clients.iter().zip(PARTICIPANTS) {
            let listed = client
                .clone()
                .list_prepared(shop_proto::twopc::ListPreparedRequest {
                    prefix: GID_PREFIX.into(),
                })
                .await;
            // One participant away does not hold back the others' recovery.
            let prepared = match listed {
                Ok(l) => l.into_inner().prepared,
                Err(e) => {
                    tracing::warn!(participant = name, error = %e, "cannot list its prepared transactions; later");
                    continue;
                }
            };
            for p in prepared {
                let at = p.prepared_at.map_or(0, |t| t.seconds);
                if at >= before.timestamp() {
                    continue;
                }
                let Some(id) = p
                    .gid
                    .strip_prefix(GID_PREFIX)
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|id| Uuid::parse_str(id).ok())
                else {
                    continue;
                };
                let state = {
                    let mut conn = self.pool.acquire().await?;
                    log::get(&mut conn, id).await?.map(|r| r.state)
                };
                let commit = match state {
                    // Not this coordinator's (every gid it makes has its log row first): another
                    // environment sharing the participant's server. Not ours to decide.
                    None => continue,
                    // The round above decides it first.
                    Some(LogState::Preparing) => continue,
                    Some(s) => s.decision().unwrap_or(false),
                };
                finish(client.clone(), &p.gid, commit).await?;
                tracing::warn!(
                    gid = p.gid,
                    commit,
                    "recovery resolved a prepared transaction"
                );
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Recovery at start and then every `interval`, until shutdown.
    pub async fn run_recovery(
        self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            match self.recover().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(transactions = n, "two-phase commit recovery"),
                Err(e) => {
                    tracing::warn!(error = %e, "two-phase commit recovery failed; again soon")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Phase two at one participant, tried a few times (50 ms, doubling, with jitter); recovery
/// takes over from there.
async fn finish(
    client: ParticipantClient<Channel>,
    gid: &str,
    commit: bool,
) -> Result<(), tonic::Status> {
    let decide = || {
        let mut client = client.clone();
        let decision = Decision {
            gid: gid.to_owned(),
        };
        async move {
            if commit {
                client.commit(decision).await
            } else {
                client.rollback(decision).await
            }
        }
    };
    decide
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(3)
                .with_jitter(),
        )
        .await
        .map(|_| ())
}
