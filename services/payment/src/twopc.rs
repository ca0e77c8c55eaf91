//! Payment's share of an order placed with two-phase commit: charge the account (the saga's
//! charge step). The account row stays locked until the coordinator's decision.

use shop_core::ServiceError;
use shop_messaging::twopc::{BoxFuture, Work, no, yes};
use shop_proto::twopc::{Vote, prepare_request};
use sqlx::PgConnection;

use crate::{
    domain::{Amount, ChargeStatus, Money},
    repository::{self, Charge},
};

pub struct ChargeWork;

impl Work for ChargeWork {
    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        _tenant: &'a str,
        work: &'a prepare_request::Work,
    ) -> BoxFuture<'a, Result<Vote, ServiceError>> {
        Box::pin(async move {
            let prepare_request::Work::ChargePayment(c) = work else {
                return Err(ServiceError::invalid(
                    "work",
                    "payment takes charge_payment",
                ));
            };
            let order_id =
                shop_core::fields::uuid("work.charge_payment.order_id", &c.order_id)?.to_string();
            let account = shop_core::fields::key(
                "work.charge_payment.account_id",
                &c.account_id,
                shop_core::fields::MAX_ID,
            )?;
            let amount = Money::parse(
                "work.charge_payment.amount",
                c.amount.as_ref(),
                Amount::Positive,
            )?;
            Ok(
                match repository::charge(conn, &order_id, &account, amount).await? {
                    Charge::Charged | Charge::AlreadyDecided(ChargeStatus::Charged, _) => yes(),
                    Charge::Declined(reason)
                    | Charge::AlreadyDecided(ChargeStatus::Declined, Some(reason)) => no(reason),
                    Charge::AlreadyDecided(status, _) => {
                        no(format!("order {order_id} is {status:?} here"))
                    }
                },
            )
        })
    }
}
