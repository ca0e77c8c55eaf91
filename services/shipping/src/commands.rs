//! The saga's commands to shipping (create, cancel), applied through the inbox. Each effect and
//! its reply (to `shop.shipping.events`, keyed by order id) commit in one transaction.
//! Idempotent by order id: at most one shipment per order, and a repeated command gets the first
//! answer; a cancel before the create leaves a tombstone that refuses the late create.

use prost::Message;
use shop_messaging::{
    NewEvent,
    envelope::EventEnvelope,
    inbox::{Handler, HandlerError},
    outbox,
    topics::types,
};
use shop_proto::events::{
    CancelShipment, CreateShipment, ShipmentCancelled, ShipmentCreated, ShipmentRefused,
};
use sqlx::PgConnection;

use crate::{domain, repository};

#[derive(Debug, Clone)]
pub struct Commands {
    /// Where replies go (`shop.shipping.events`, with the deployment's prefix).
    pub events_topic: String,
    pub zones: Vec<String>,
}

impl Handler for Commands {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        cmd: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let reply = match cmd.event_type.as_str() {
            types::CREATE_SHIPMENT => {
                let c = CreateShipment::decode(cmd.payload.as_slice())?;
                match repository::for_order(conn, &c.order_id).await? {
                    Some(s) if s.status == "refused" => {
                        self.refused(cmd, &c.order_id, s.reason.unwrap_or_default())
                    }
                    Some(s) if s.status == "cancelled" => {
                        self.refused(cmd, &c.order_id, "order already cancelled".into())
                    }
                    Some(s) => self.created(cmd, &c.order_id, s.shipment_id),
                    None => match domain::check("address", c.address.as_ref(), &self.zones) {
                        Err(refusal) => {
                            let reason = refusal.to_string();
                            repository::insert(
                                conn,
                                &c.order_id,
                                &cmd.tenant_id,
                                "refused",
                                Some(&reason),
                                c.address.as_ref(),
                            )
                            .await?;
                            self.refused(cmd, &c.order_id, reason)
                        }
                        Ok(()) => {
                            let id = repository::insert(
                                conn,
                                &c.order_id,
                                &cmd.tenant_id,
                                "created",
                                None,
                                c.address.as_ref(),
                            )
                            .await?;
                            self.created(cmd, &c.order_id, id)
                        }
                    },
                }
            }
            types::CANCEL_SHIPMENT => {
                let c = CancelShipment::decode(cmd.payload.as_slice())?;
                match repository::for_order(conn, &c.order_id).await? {
                    None => {
                        let reason = Some("cancelled before it was created");
                        repository::insert(
                            conn,
                            &c.order_id,
                            &cmd.tenant_id,
                            "cancelled",
                            reason,
                            None,
                        )
                        .await?;
                    }
                    Some(s) if s.status == "created" => {
                        repository::set_status(conn, &c.order_id, "cancelled").await?
                    }
                    Some(s) if s.status == "in_transit" || s.status == "delivered" => {
                        return Err(HandlerError::Permanent(anyhow::anyhow!(
                            "cancel of order {} whose shipment is {}",
                            c.order_id,
                            s.status
                        )));
                    }
                    Some(_) => {} // refused or cancelled already: nothing to undo
                }
                let payload = ShipmentCancelled {
                    order_id: c.order_id.clone(),
                };
                self.reply(cmd, &c.order_id, types::SHIPMENT_CANCELLED, &payload)
            }
            other => {
                return Err(HandlerError::Permanent(anyhow::anyhow!(
                    "shipping does not handle {other}"
                )));
            }
        };
        outbox::enqueue(conn, &reply).await?;
        Ok(())
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

    fn created(&self, cmd: &EventEnvelope, order_id: &str, shipment_id: uuid::Uuid) -> NewEvent {
        let payload = ShipmentCreated {
            order_id: order_id.to_owned(),
            shipment_id: shipment_id.to_string(),
        };
        self.reply(cmd, order_id, types::SHIPMENT_CREATED, &payload)
    }

    fn refused(&self, cmd: &EventEnvelope, order_id: &str, reason: String) -> NewEvent {
        let payload = ShipmentRefused {
            order_id: order_id.to_owned(),
            reason,
        };
        self.reply(cmd, order_id, types::SHIPMENT_REFUSED, &payload)
    }
}
