//! `shopctl saga ...`: look at sagas and intervene by hand (wraps the order service's saga RPCs).

use shop_proto::{
    common::PageRequest,
    order::{
        CompensateSagaRequest, GetSagaRequest, ListSagasRequest, RetrySagaRequest, Saga, SagaState,
        order_service_client::OrderServiceClient,
    },
};

#[derive(clap::Subcommand, Debug)]
pub enum SagaCmd {
    /// One saga with its steps.
    Get { saga_id: String },
    /// Sagas, oldest first.
    List {
        /// e.g. COMPENSATING, STARTED, CANCELLED
        #[arg(long)]
        state: Option<String>,
        /// Only sagas past their step deadline.
        #[arg(long)]
        stuck: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send the command in flight again.
    Retry { saga_id: String },
    /// Stop going forward and undo what was done.
    Compensate {
        saga_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(order_addr: &str, cmd: SagaCmd) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::connect(order_addr.to_owned()).await?;
    match cmd {
        SagaCmd::Get { saga_id } => print_saga(
            &client
                .get_saga(GetSagaRequest { saga_id })
                .await?
                .into_inner(),
            true,
        ),
        SagaCmd::List {
            state,
            stuck,
            limit,
        } => {
            let state = match state {
                None => SagaState::Unspecified,
                Some(s) => SagaState::from_str_name(&format!("SAGA_STATE_{}", s.to_uppercase()))
                    .ok_or_else(|| anyhow::anyhow!("unknown state {s}"))?,
            };
            let page = Some(PageRequest {
                page_size: limit,
                page_token: String::new(),
            });
            let list = client
                .list_sagas(ListSagasRequest {
                    state: state.into(),
                    stuck_only: stuck,
                    page,
                })
                .await?
                .into_inner();
            for s in &list.sagas {
                print_saga(s, false);
            }
            if !list.next_page_token.is_empty() {
                println!("(more: raise --limit)");
            }
        }
        SagaCmd::Retry { saga_id } => print_saga(
            &client
                .retry_saga(RetrySagaRequest { saga_id })
                .await?
                .into_inner(),
            true,
        ),
        SagaCmd::Compensate { saga_id, reason } => print_saga(
            &client
                .compensate_saga(CompensateSagaRequest { saga_id, reason })
                .await?
                .into_inner(),
            true,
        ),
    }
    Ok(())
}

fn print_saga(s: &Saga, steps: bool) {
    let state = s.state().as_str_name().trim_start_matches("SAGA_STATE_");
    let stuck = if s.stuck { "  STUCK" } else { "" };
    println!("{}  {state:<18}{stuck}  {}", s.saga_id, s.last_error);
    if steps {
        for step in &s.steps {
            println!(
                "    {:<16} {:<10} tries {}  {}",
                step.name, step.status, step.attempts, step.last_error
            );
        }
    }
}
