//! Two-phase commit, the participant's side on PostgreSQL: the gRPC `Participant` service that
//! inventory, payment and shipping serve (`proto/shop/twopc/v1/twopc.proto`), over a [`Work`]
//! each of them supplies (its share of an order, done on the caller's connection).
//!
//! Phase one, [`Participant::prepare`]: `BEGIN`, the work (which may enqueue outbox rows, as a
//! command handler would), then `PREPARE TRANSACTION '<gid>'` for a yes, `ROLLBACK` for a no.
//! A prepared transaction survives the session, a crash and a restart of the server, and holds
//! its row locks until phase two: `COMMIT PREPARED` or `ROLLBACK PREPARED`, sent by the
//! coordinator from any connection. Needs `max_prepared_transactions > 0` (the native stack,
//! compose and Helm set it).

use std::sync::Arc;

pub use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};

use shop_core::{ServiceError, fields};
use shop_proto::twopc::{
    Decision, Done, ListPreparedRequest, ListPreparedResponse, PrepareRequest, PreparedTransaction,
    Vote, participant_server::Participant, prepare_request,
};

/// How long phase one waits for a row lock before it votes no (below the coordinator's
/// prepare timeout, so a busy participant answers instead of timing out).
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Every gid of this platform starts with this.
pub const GID_PREFIX: &str = "shop2pc:";
const MAX_GID: usize = 200;

/// The gid of `participant`'s share of order `order_id` (unique in the cluster: the
/// participants' databases may share one).
pub fn gid(order_id: &str, participant: &str) -> String {
    format!("{GID_PREFIX}{order_id}:{participant}")
}

/// A gid is spliced into `PREPARE TRANSACTION '...'` (it takes no parameter): only a
/// harmless character set passes.
fn checked_gid<'a>(field: &str, gid: &'a str) -> Result<&'a str, ServiceError> {
    if gid.is_empty() {
        return Err(ServiceError::invalid(field, "is required"));
    }
    if gid.len() > MAX_GID {
        return Err(ServiceError::invalid(
            field,
            format!("is longer than {MAX_GID} bytes"),
        ));
    }
    if !gid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-'))
    {
        return Err(ServiceError::invalid(
            field,
            "may only contain letters, digits, ':', '_', '.' and '-'",
        ));
    }
    Ok(gid)
}

/// A participant's share of an order.
pub trait Work: Send + Sync + 'static {
    /// Does `work` on `conn` (inside the transaction to be prepared) and votes: yes if it is
    /// done and may be committed, no (with the reason) if it cannot be done; for a no, the
    /// transaction is rolled back, so nothing of it stays.
    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a str,
        work: &'a prepare_request::Work,
    ) -> BoxFuture<'a, Result<Vote, ServiceError>>;
}

pub fn yes() -> Vote {
    Vote {
        yes: true,
        reason: String::new(),
    }
}

pub fn no(reason: impl Into<String>) -> Vote {
    Vote {
        yes: false,
        reason: reason.into(),
    }
}

/// The `Participant` service over `W`.
pub struct TwoPhase<W> {
    pool: PgPool,
    work: Arc<W>,
}

async fn is_prepared(pool: &PgPool, gid: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)")
        .bind(gid)
        .fetch_one(pool)
        .await
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()?.code().map(|c| c.into_owned())
}

/// SQLSTATE 42704: no prepared transaction with that gid.
fn not_prepared(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("42704")
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED`; `false` if nothing was prepared under `gid`.
pub async fn finish(pool: &PgPool, gid: &str, commit: bool) -> Result<bool, ServiceError> {
    let gid = checked_gid("gid", gid)?;
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    let statement = format!("{verb} PREPARED '{gid}'");
    match sqlx::query(&statement)
        .persistent(false)
        .execute(pool)
        .await
    {
        Ok(_) => {
            if commit {
                // Its outbox rows are visible now.
                crate::wake::committed();
            }
            Ok(true)
        }
        Err(e) if not_prepared(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The transactions prepared in this database whose gid starts with `prefix`, oldest first.
pub async fn prepared(
    pool: &PgPool,
    prefix: &str,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT gid, prepared FROM pg_prepared_xacts
         WHERE database = current_database() AND starts_with(gid, $1)
         ORDER BY prepared LIMIT 1000",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
}

impl<W: Work> TwoPhase<W> {
    pub fn new(pool: PgPool, work: W) -> Self {
        Self {
            pool,
            work: Arc::new(work),
        }
    }
}

/// Phase one on a transaction of its own. sqlx's `Transaction` rolls back whatever is left
/// open if this is dropped half-way, so no connection goes back to the pool inside it.
async fn prepare_in<W: Work>(
    pool: &PgPool,
    work: &W,
    gid: &str,
    tenant: &str,
    what: &prepare_request::Work,
) -> Result<Vote, ServiceError> {
    let mut tx = pool.begin().await?;
    // A row another prepared transaction holds stays held until that one's decision arrives:
    // waiting for it without bound would pin this connection (and, many times over, the pool
    // the decision itself needs). Past the bound the vote is no.
    let bound = format!("SET LOCAL lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis());
    sqlx::query(&bound).execute(&mut *tx).await?;
    let vote = match work.prepare(&mut tx, tenant, what).await {
        Err(ServiceError::Internal(cause))
            if cause
                .downcast_ref::<sqlx::Error>()
                .and_then(sqlstate)
                .as_deref()
                == Some("55P03") =>
        {
            tx.rollback().await?;
            return Ok(no(format!(
                "busy: could not lock what this order needs within {LOCK_TIMEOUT:?} (held by another order in doubt)"
            )));
        }
        other => other?,
    };
    if !vote.yes {
        tx.rollback().await?;
        return Ok(vote);
    }
    let prepare = format!("PREPARE TRANSACTION '{gid}'");
    let prepared = sqlx::query(&prepare)
        .persistent(false)
        .execute(&mut *tx)
        .await;
    // PREPARE ends the session's transaction whether it succeeds or not; this COMMIT (a no-op
    // with a warning) only tells sqlx so.
    tx.commit().await?;
    match prepared {
        Ok(_) => Ok(vote),
        // A concurrent copy of this request prepared the gid first.
        Err(e) if sqlstate(&e).as_deref() == Some("42710") => Ok(vote),
        // max_prepared_transactions = 0: this server cannot take part.
        Err(e) if sqlstate(&e).as_deref() == Some("55000") => {
            Err(ServiceError::FailedPrecondition(format!(
                "this database cannot prepare transactions (set max_prepared_transactions > 0): {e}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl<W: Work> Participant for TwoPhase<W> {
    async fn prepare(&self, request: Request<PrepareRequest>) -> Result<Response<Vote>, Status> {
        let r = request.into_inner();
        let gid = checked_gid("gid", &r.gid)?;
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let Some(work) = r.work.as_ref() else {
            return Err(ServiceError::invalid("work", "is required").into());
        };
        if is_prepared(&self.pool, gid)
            .await
            .map_err(ServiceError::from)?
        {
            return Ok(Response::new(yes()));
        }
        // On a task of its own: a caller that gives up (the coordinator's timeout, its crash)
        // does not cut phase one in half. What it prepares anyway, recovery resolves.
        let (pool, work, gid, what) = (
            self.pool.clone(),
            self.work.clone(),
            gid.to_owned(),
            work.clone(),
        );
        let vote = tokio::spawn(async move {
            prepare_in(&pool, work.as_ref(), &gid, tenant.as_str(), &what).await
        })
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("prepare task: {e}")))
        .and_then(|v| v);
        metrics::counter!("twopc_prepared_total", "vote" => match &vote {
            Ok(v) if v.yes => "yes",
            Ok(_) => "no",
            Err(_) => "error",
        })
        .increment(1);
        Ok(Response::new(vote?))
    }

    async fn commit(&self, request: Request<Decision>) -> Result<Response<Done>, Status> {
        let was_prepared = finish(&self.pool, &request.into_inner().gid, true).await?;
        Ok(Response::new(Done { was_prepared }))
    }

    async fn rollback(&self, request: Request<Decision>) -> Result<Response<Done>, Status> {
        let was_prepared = finish(&self.pool, &request.into_inner().gid, false).await?;
        Ok(Response::new(Done { was_prepared }))
    }

    async fn list_prepared(
        &self,
        request: Request<ListPreparedRequest>,
    ) -> Result<Response<ListPreparedResponse>, Status> {
        let prefix = request.into_inner().prefix;
        if !prefix.is_empty() {
            checked_gid("prefix", &prefix)?;
        }
        let rows = prepared(&self.pool, &prefix)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(ListPreparedResponse {
            prepared: rows
                .into_iter()
                .map(|(gid, at)| PreparedTransaction {
                    gid,
                    prepared_at: Some(prost_types::Timestamp {
                        seconds: at.timestamp(),
                        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
                    }),
                })
                .collect(),
        }))
    }
}
