//! `shopctl orders ...`: the event-sourced orders: an order as of a version or a time (audit),
//! and the read-model rebuild (wraps the order service's RPCs).

use shop_proto::order::{
    GetOrderAsOfRequest, GetOrderRequest, Order, RebuildReadModelsRequest,
    get_order_as_of_request::AsOf, order_service_client::OrderServiceClient,
};

#[derive(clap::Subcommand, Debug)]
pub enum OrdersCmd {
    /// An order from the read model.
    Get { order_id: String },
    /// An order replayed from its events up to a stream version or a time (RFC 3339).
    AsOf {
        order_id: String,
        #[arg(long, conflicts_with = "at")]
        version: Option<u64>,
        #[arg(long)]
        at: Option<String>,
    },
    /// Replay the event store into fresh read models and swap them in (no downtime).
    Rebuild,
}

pub async fn run(order_addr: &str, cmd: OrdersCmd) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::connect(order_addr.to_owned()).await?;
    match cmd {
        OrdersCmd::Get { order_id } => {
            let o = client
                .get_order(GetOrderRequest {
                    order_id,
                    min_stream_version: 0,
                })
                .await?
                .into_inner();
            print_order(&o);
        }
        OrdersCmd::AsOf {
            order_id,
            version,
            at,
        } => {
            let as_of = match (version, at) {
                (Some(v), _) => AsOf::Version(v),
                (None, Some(at)) => {
                    let t = chrono::DateTime::parse_from_rfc3339(&at)?;
                    AsOf::At(prost_types::Timestamp {
                        seconds: t.timestamp(),
                        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
                    })
                }
                (None, None) => anyhow::bail!("give --version or --at"),
            };
            let o = client
                .get_order_as_of(GetOrderAsOfRequest {
                    order_id,
                    as_of: Some(as_of),
                })
                .await?
                .into_inner();
            print_order(&o);
        }
        OrdersCmd::Rebuild => {
            let r = client
                .rebuild_read_models(RebuildReadModelsRequest {})
                .await?
                .into_inner();
            println!(
                "read models rebuilt: generation {}, {} events replayed in {} ms",
                r.generation, r.events_replayed, r.duration_ms
            );
        }
    }
    Ok(())
}

fn print_order(o: &Order) {
    let total = o.total.clone().unwrap_or_default();
    println!(
        "order {} (tenant {}, customer {}): {:?}, saga {:?}, stream version {}, total {} {}{}",
        o.order_id,
        o.tenant_id,
        o.customer_id,
        o.status(),
        o.saga_state(),
        o.stream_version,
        total.amount_minor,
        total.currency,
        if o.cancel_reason.is_empty() {
            String::new()
        } else {
            format!(", cancelled: {}", o.cancel_reason)
        }
    );
    for i in &o.items {
        let p = i.unit_price.clone().unwrap_or_default();
        println!(
            "  {} x{} @ {} {}",
            i.sku, i.quantity, p.amount_minor, p.currency
        );
    }
}
