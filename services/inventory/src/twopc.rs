//! Inventory's share of an order placed with two-phase commit: reserve the stock and let it
//! leave at once (what the saga's reserve and commit steps do, in one transaction). The rows
//! stay locked (`FOR UPDATE` in the reservation) until the coordinator's decision.

use shop_core::ServiceError;
use shop_messaging::{
    outbox,
    twopc::{BoxFuture, Work, no, yes},
};
use shop_proto::twopc::{Vote, prepare_request};
use sqlx::PgConnection;

use crate::{
    commands::level_changed,
    domain::{Request, Status},
    repository::{self, Commit, Reserve},
};

pub struct StockWork {
    /// Where stock levels go (`shop.inventory.events`, prefixed).
    pub events_topic: String,
}

impl Work for StockWork {
    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a str,
        work: &'a prepare_request::Work,
    ) -> BoxFuture<'a, Result<Vote, ServiceError>> {
        Box::pin(async move {
            let prepare_request::Work::ReserveStock(r) = work else {
                return Err(ServiceError::invalid(
                    "work",
                    "inventory takes reserve_stock",
                ));
            };
            let order_id =
                shop_core::fields::uuid("work.reserve_stock.order_id", &r.order_id)?.to_string();
            let request = match Request::parse(&r.items) {
                Ok(request) => request,
                Err(e) => return Ok(no(e.to_string())),
            };
            let levels = match repository::reserve(conn, tenant, &order_id, &request).await? {
                Reserve::Reserved(levels) => levels,
                Reserve::AlreadyDecided(Status::Reserved | Status::Committed, _) => vec![],
                Reserve::Rejected(reason) | Reserve::AlreadyDecided(_, Some(reason)) => {
                    return Ok(no(reason));
                }
                Reserve::AlreadyDecided(status, None) => {
                    return Ok(no(format!("order {order_id} is {status:?} here")));
                }
            };
            match repository::commit(conn, &order_id).await? {
                Commit::Committed | Commit::AlreadyCommitted => {}
                Commit::NotReserved(s) => return Ok(no(format!("nothing reserved ({s:?})"))),
            }
            let events: Vec<_> = levels
                .iter()
                .map(|(sku, available)| level_changed(&self.events_topic, tenant, sku, *available))
                .collect();
            outbox::enqueue_all(conn, &events).await?;
            Ok(yes())
        })
    }
}
