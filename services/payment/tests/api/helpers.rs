//! `spawn_app()`: the whole service on free ports with a database and topic prefix of its own.

use shop_messaging::{service::PgServiceSettings, testing, testing::CommandChannel, topics};
use shop_proto::{
    common::Money,
    payment::{
        Account, GetAccountRequest, OpenAccountRequest,
        payment_service_client::PaymentServiceClient,
    },
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const TENANT: &str = "acme";

pub struct TestApp {
    pub grpc: PaymentServiceClient<Channel>,
    pub pool: PgPool,
    pub saga: CommandChannel,
    settings: PgServiceSettings,
    shutdown: CancellationToken,
}

pub async fn spawn_app() -> TestApp {
    let settings = testing::service_settings("payment");
    let shutdown = CancellationToken::new();
    let app = shop_payment::build(&settings, shutdown.clone())
        .await
        .expect("build");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        grpc: PaymentServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc"),
        pool: testing::pool(&settings).await,
        saga: CommandChannel::new(
            &settings.kafka,
            topics::PAYMENT_COMMANDS,
            topics::PAYMENT_EVENTS,
            TENANT,
        ),
        settings,
        shutdown,
    }
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

impl TestApp {
    pub async fn open(&self, account_id: &str, opening_minor: i64) -> Account {
        self.grpc
            .clone()
            .open_account(OpenAccountRequest {
                account_id: account_id.into(),
                tenant_id: TENANT.into(),
                opening_balance: usd(opening_minor),
            })
            .await
            .expect("open account")
            .into_inner()
    }

    pub async fn balance(&self, account_id: &str) -> i64 {
        self.grpc
            .clone()
            .get_account(GetAccountRequest {
                account_id: account_id.into(),
            })
            .await
            .expect("get account")
            .into_inner()
            .balance
            .expect("balance")
            .amount_minor
    }

    /// opening + sum(movements) - balance: 0 when the ledger adds up.
    pub async fn ledger_gap(&self, account_id: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT a.opening_minor + COALESCE((SELECT sum(amount_minor) FROM movement m WHERE m.account_id = a.account_id), 0)::bigint
                    - a.balance_minor
             FROM account a WHERE a.account_id = $1",
        )
        .bind(account_id)
        .fetch_one(&self.pool)
        .await
        .expect("ledger")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.pool.close().await;
        testing::drop_database(&self.settings).await;
    }
}
