//! The saga's commands to inventory, applied through the inbox. Each command's effect, its reply
//! (to `shop.inventory.events`, keyed by order id) and any stock-level facts commit together.
//!
//! Commands are idempotent by order id as well as by message: the saga may send a command again
//! (a retry after a timeout is a new message), and the answer is the one given the first time.

use prost::Message;
use shop_messaging::{
    NewEvent,
    envelope::EventEnvelope,
    inbox::{Handler, HandlerError},
    outbox,
    topics::types,
};
use shop_proto::events::{
    CommitStock, ReleaseStock, ReserveStock, StockCommitted, StockLevelChanged, StockReleased,
    StockReservationFailed, StockReserved,
};
use sqlx::PgConnection;

use crate::{
    domain::{Request, Status},
    repository::{self, Commit, Level, Release, Reserve},
};

#[derive(Debug, Clone)]
pub struct Commands {
    /// Where replies and stock facts go (`shop.inventory.events`, with the deployment's prefix).
    pub events_topic: String,
}

impl Handler for Commands {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        cmd: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let tenant = cmd.tenant_id.as_str();
        match cmd.event_type.as_str() {
            types::RESERVE_STOCK => {
                let c = ReserveStock::decode(cmd.payload.as_slice())?;
                let outcome = match Request::parse(&c.items) {
                    Ok(request) => repository::reserve(conn, tenant, &c.order_id, &request).await?,
                    // A malformed command is answered, not dead-lettered: the saga compensates.
                    Err(e) => Reserve::Rejected(e.to_string()),
                };
                let (reply, levels) = match outcome {
                    Reserve::Reserved(levels) => (self.reserved(cmd, &c.order_id), levels),
                    Reserve::AlreadyDecided(Status::Reserved | Status::Committed, _) => {
                        (self.reserved(cmd, &c.order_id), vec![])
                    }
                    Reserve::Rejected(reason) => (self.failed(cmd, &c.order_id, reason), vec![]),
                    Reserve::AlreadyDecided(Status::Rejected, reason) => (
                        self.failed(cmd, &c.order_id, reason.unwrap_or_default()),
                        vec![],
                    ),
                    Reserve::AlreadyDecided(Status::Released, _) => (
                        self.failed(cmd, &c.order_id, "order already released".into()),
                        vec![],
                    ),
                };
                self.publish(conn, cmd, reply, &levels).await
            }
            types::RELEASE_STOCK => {
                let c = ReleaseStock::decode(cmd.payload.as_slice())?;
                let levels = match repository::release(conn, tenant, &c.order_id).await? {
                    Release::Released(levels) => levels,
                    Release::NothingHeld => vec![],
                    Release::AlreadyCommitted => {
                        return Err(HandlerError::Permanent(anyhow::anyhow!(
                            "release of order {} after its stock was committed",
                            c.order_id
                        )));
                    }
                };
                let reply = self.reply(
                    cmd,
                    &c.order_id,
                    types::STOCK_RELEASED,
                    &StockReleased {
                        order_id: c.order_id.clone(),
                    },
                );
                self.publish(conn, cmd, reply, &levels).await
            }
            types::COMMIT_STOCK => {
                let c = CommitStock::decode(cmd.payload.as_slice())?;
                match repository::commit(conn, &c.order_id).await? {
                    Commit::Committed | Commit::AlreadyCommitted => {}
                    Commit::NotReserved(status) => {
                        return Err(HandlerError::Permanent(anyhow::anyhow!(
                            "commit of order {} with no reservation held ({status:?})",
                            c.order_id
                        )));
                    }
                }
                let reply = self.reply(
                    cmd,
                    &c.order_id,
                    types::STOCK_COMMITTED,
                    &StockCommitted {
                        order_id: c.order_id.clone(),
                    },
                );
                self.publish(conn, cmd, reply, &[]).await
            }
            other => Err(HandlerError::Permanent(anyhow::anyhow!(
                "inventory does not handle {other}"
            ))),
        }
    }
}

impl Commands {
    fn reply(
        &self,
        cmd: &EventEnvelope,
        order_id: &str,
        event_type: &str,
        payload: &impl Message,
    ) -> NewEvent {
        NewEvent::new(&self.events_topic, event_type, "order", order_id, payload).caused_by(cmd)
    }

    fn reserved(&self, cmd: &EventEnvelope, order_id: &str) -> NewEvent {
        let payload = StockReserved {
            order_id: order_id.to_owned(),
        };
        self.reply(cmd, order_id, types::STOCK_RESERVED, &payload)
    }

    fn failed(&self, cmd: &EventEnvelope, order_id: &str, reason: String) -> NewEvent {
        let payload = StockReservationFailed {
            order_id: order_id.to_owned(),
            reason,
        };
        self.reply(cmd, order_id, types::STOCK_RESERVATION_FAILED, &payload)
    }

    /// The reply, then one `stock_level_changed` per changed SKU, in one outbox statement.
    async fn publish(
        &self,
        conn: &mut PgConnection,
        cmd: &EventEnvelope,
        reply: NewEvent,
        levels: &[Level],
    ) -> Result<(), HandlerError> {
        let mut events = vec![reply];
        events.extend(levels.iter().map(|(sku, available)| {
            level_changed(&self.events_topic, &cmd.tenant_id, sku, *available).caused_by(cmd)
        }));
        outbox::enqueue_all(conn, &events).await?;
        Ok(())
    }
}

/// A `stock_level_changed` fact, keyed by SKU (catalog and search keep their stock from it).
pub fn level_changed(topic: &str, tenant: &str, sku: &str, available: i64) -> NewEvent {
    NewEvent::new(
        topic,
        types::STOCK_LEVEL_CHANGED,
        "stock",
        sku,
        &StockLevelChanged {
            sku: sku.to_owned(),
            available,
            tenant_id: tenant.to_owned(),
        },
    )
    .tenant(tenant)
}
