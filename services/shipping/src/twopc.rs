//! Shipping's share of an order placed with two-phase commit: create the shipment (the saga's
//! ship step), refused for a destination outside the zones.

use shop_core::ServiceError;
use shop_messaging::twopc::{BoxFuture, Work, no, yes};
use shop_proto::twopc::{Vote, prepare_request};
use sqlx::PgConnection;

use crate::{domain, repository};

pub struct ShipWork {
    pub zones: Vec<String>,
}

impl Work for ShipWork {
    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: &'a str,
        work: &'a prepare_request::Work,
    ) -> BoxFuture<'a, Result<Vote, ServiceError>> {
        Box::pin(async move {
            let prepare_request::Work::CreateShipment(c) = work else {
                return Err(ServiceError::invalid(
                    "work",
                    "shipping takes create_shipment",
                ));
            };
            let order_id =
                shop_core::fields::uuid("work.create_shipment.order_id", &c.order_id)?.to_string();
            Ok(match repository::for_order(conn, &order_id).await? {
                Some(s) if s.status == "created" => yes(),
                Some(s) => no(s.reason.unwrap_or(format!("shipment is {}", s.status))),
                None => match domain::check("address", c.address.as_ref(), &self.zones) {
                    Err(refusal) => no(refusal.to_string()),
                    Ok(()) => {
                        repository::insert(
                            conn,
                            &order_id,
                            tenant,
                            "created",
                            None,
                            c.address.as_ref(),
                        )
                        .await?;
                        yes()
                    }
                },
            })
        })
    }
}
