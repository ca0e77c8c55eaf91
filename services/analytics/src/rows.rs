//! Envelope -> ClickHouse rows. Pure: no I/O.
//!
//! Every event becomes one `events` row (its id, type, tenant, order, amount, reason, time);
//! `order.placed` also becomes one `order_lines` row per line. Rows carry their retention class:
//! order and payment facts are kept 7 years, everything else 2 (seed 001).

use clickhouse::Row;
use prost::Message;
use serde::{Deserialize, Serialize};
use shop_messaging::{envelope::EventEnvelope, topics::types};
use shop_proto::events::{
    OrderCancelled, OrderCompleted, OrderPlaced, PaymentCharged, PaymentDeclined, PaymentRefunded,
    ShipmentRefused, StockReservationFailed,
};

/// Field order = column order (RowBinary without validation, for ClickHouse 18.16).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub event_id: String,
    pub event_type: String,
    pub tenant_id: String,
    pub aggregate_id: String,
    pub order_id: String,
    /// Seconds since the epoch (ClickHouse `DateTime`).
    pub occurred_at: u32,
    /// Milliseconds since the epoch, for durations (18.16 has no DateTime64).
    pub occurred_ms: u64,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub retention_years: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct LineRow {
    pub order_id: String,
    pub line_no: u16,
    pub tenant_id: String,
    pub sku: String,
    pub quantity: u32,
    pub unit_minor: i64,
    pub occurred_at: u32,
    pub retention_years: u8,
}

pub const FINANCE_YEARS: u8 = 7;
pub const OTHER_YEARS: u8 = 2;

/// The rows for one event; an undecodable payload is an error (the caller counts and skips it).
pub fn rows(e: &EventEnvelope) -> Result<(EventRow, Vec<LineRow>), prost::DecodeError> {
    let p = e.payload.as_slice();
    let (occurred_at, occurred_ms) = e.occurred_at.as_ref().map_or((0, 0), |t| {
        (
            u32::try_from(t.seconds).unwrap_or(0),
            (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000,
        )
    });
    let finance = e.event_type.starts_with("order.") || e.event_type.starts_with("payment.");
    let retention_years = if finance { FINANCE_YEARS } else { OTHER_YEARS };
    let mut row = EventRow {
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        tenant_id: e.tenant_id.clone(),
        aggregate_id: e.aggregate_id.clone(),
        order_id: if e.aggregate_type == "order" {
            e.aggregate_id.clone()
        } else {
            String::new()
        },
        occurred_at,
        occurred_ms,
        amount_minor: 0,
        currency: String::new(),
        reason: String::new(),
        retention_years,
    };
    let mut lines = Vec::new();
    let money = |m: Option<shop_proto::common::Money>| {
        m.map_or((0, String::new()), |m| (m.amount_minor, m.currency))
    };
    match e.event_type.as_str() {
        types::ORDER_PLACED => {
            let o = OrderPlaced::decode(p)?;
            (row.amount_minor, row.currency) = money(o.total);
            for (i, item) in o.items.iter().enumerate() {
                lines.push(LineRow {
                    order_id: row.order_id.clone(),
                    line_no: u16::try_from(i).unwrap_or(u16::MAX),
                    tenant_id: row.tenant_id.clone(),
                    sku: item.sku.clone(),
                    quantity: item.quantity,
                    unit_minor: item.unit_price.as_ref().map_or(0, |m| m.amount_minor),
                    occurred_at,
                    retention_years,
                });
            }
        }
        types::ORDER_COMPLETED => {
            (row.amount_minor, row.currency) = money(OrderCompleted::decode(p)?.total)
        }
        types::ORDER_CANCELLED => row.reason = OrderCancelled::decode(p)?.reason,
        types::PAYMENT_CHARGED => {
            (row.amount_minor, row.currency) = money(PaymentCharged::decode(p)?.amount)
        }
        types::PAYMENT_REFUNDED => {
            (row.amount_minor, row.currency) = money(PaymentRefunded::decode(p)?.amount)
        }
        types::PAYMENT_DECLINED => row.reason = PaymentDeclined::decode(p)?.reason,
        types::STOCK_RESERVATION_FAILED => row.reason = StockReservationFailed::decode(p)?.reason,
        types::SHIPMENT_REFUSED => row.reason = ShipmentRefused::decode(p)?.reason,
        _ => {}
    }
    Ok((row, lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_messaging::NewEvent;
    use shop_proto::common::{LineItem, Money};

    #[test]
    fn an_order_placed_becomes_an_event_and_its_lines_with_7_year_retention() {
        let placed = OrderPlaced {
            order_id: "o1".into(),
            items: vec![
                LineItem {
                    sku: "a".into(),
                    quantity: 2,
                    unit_price: Some(Money {
                        amount_minor: 150,
                        currency: "USD".into(),
                    }),
                },
                LineItem {
                    sku: "a".into(),
                    quantity: 1,
                    unit_price: Some(Money {
                        amount_minor: 150,
                        currency: "USD".into(),
                    }),
                },
            ],
            total: Some(Money {
                amount_minor: 450,
                currency: "USD".into(),
            }),
            ..Default::default()
        };
        let e = NewEvent::new("t", types::ORDER_PLACED, "order", "o1", &placed)
            .tenant("acme")
            .envelope;
        let (row, lines) = rows(&e).unwrap();
        assert_eq!(
            (row.order_id.as_str(), row.amount_minor, row.retention_years),
            ("o1", 450, 7)
        );
        assert_eq!(
            lines.len(),
            2,
            "two lines of one SKU stay two rows (line_no tells them apart)"
        );
        assert_eq!(lines[1].line_no, 1);
    }

    #[test]
    fn stock_facts_are_kept_two_years() {
        let e = NewEvent::new(
            "t",
            types::STOCK_LEVEL_CHANGED,
            "stock",
            "sku-1",
            &shop_proto::events::StockLevelChanged::default(),
        )
        .envelope;
        let (row, lines) = rows(&e).unwrap();
        assert_eq!(
            (row.retention_years, row.order_id.as_str(), lines.len()),
            (2, "", 0)
        );
    }
}
