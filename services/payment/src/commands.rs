//! The saga's commands to payment (charge, refund), applied through the inbox. Each effect and
//! its reply (to `shop.payment.events`, keyed by order id) commit in one transaction.
//! Idempotent by order id: a charge happens at most once per order, whatever the redeliveries
//! and retries, and a repeated command gets the first answer.

use prost::Message;
use shop_messaging::{
    NewEvent,
    envelope::EventEnvelope,
    inbox::{Handler, HandlerError},
    outbox,
    topics::types,
};
use shop_proto::events::{
    ChargePayment, PaymentCharged, PaymentDeclined, PaymentRefunded, RefundPayment,
};
use sqlx::PgConnection;

use crate::{
    domain::{Amount, ChargeStatus, Money},
    repository::{self, Charge},
};

#[derive(Debug, Clone)]
pub struct Commands {
    /// Where replies go (`shop.payment.events`, with the deployment's prefix).
    pub events_topic: String,
}

impl Handler for Commands {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        cmd: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let reply = match cmd.event_type.as_str() {
            types::CHARGE_PAYMENT => {
                let c = ChargePayment::decode(cmd.payload.as_slice())?;
                let outcome = match Money::parse("amount", c.amount.as_ref(), Amount::Positive) {
                    Ok(amount) => {
                        repository::charge(conn, &c.order_id, &c.account_id, amount).await?
                    }
                    // A malformed command is answered, not dead-lettered: the saga compensates.
                    Err(e) => Charge::Declined(e.to_string()),
                };
                match outcome {
                    Charge::Charged | Charge::AlreadyDecided(ChargeStatus::Charged, _) => self
                        .reply(
                            cmd,
                            &c.order_id,
                            types::PAYMENT_CHARGED,
                            &PaymentCharged {
                                order_id: c.order_id.clone(),
                                amount: c.amount.clone(),
                            },
                        ),
                    Charge::Declined(reason)
                    | Charge::AlreadyDecided(ChargeStatus::Declined, Some(reason)) => {
                        self.declined(cmd, &c.order_id, reason)
                    }
                    Charge::AlreadyDecided(ChargeStatus::Declined, None) => {
                        self.declined(cmd, &c.order_id, "declined".into())
                    }
                    Charge::AlreadyDecided(ChargeStatus::Refunded, _) => {
                        self.declined(cmd, &c.order_id, "order already refunded".into())
                    }
                }
            }
            types::REFUND_PAYMENT => {
                let c = RefundPayment::decode(cmd.payload.as_slice())?;
                let amount = repository::refund(conn, &c.order_id).await?;
                self.reply(
                    cmd,
                    &c.order_id,
                    types::PAYMENT_REFUNDED,
                    &PaymentRefunded {
                        order_id: c.order_id.clone(),
                        amount: Some(amount.to_proto()),
                    },
                )
            }
            other => {
                return Err(HandlerError::Permanent(anyhow::anyhow!(
                    "payment does not handle {other}"
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

    fn declined(&self, cmd: &EventEnvelope, order_id: &str, reason: String) -> NewEvent {
        let payload = PaymentDeclined {
            order_id: order_id.to_owned(),
            reason,
        };
        self.reply(cmd, order_id, types::PAYMENT_DECLINED, &payload)
    }
}
