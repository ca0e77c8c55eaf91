//! `spawn_app()`: the whole service on free ports with a database and topic prefix of its own.

use shop_messaging::{
    envelope::EventEnvelope, service::PgServiceSettings, testing, testing::CommandChannel, topics,
};
use shop_proto::{
    common::LineItem,
    inventory::{
        GetStockRequest, RestockRequest, inventory_service_client::InventoryServiceClient,
    },
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const TENANT: &str = "acme";

pub struct TestApp {
    pub grpc: InventoryServiceClient<Channel>,
    /// `http://<address>` of the service.
    pub url: String,
    pub pool: PgPool,
    pub saga: CommandChannel,
    settings: PgServiceSettings,
    shutdown: CancellationToken,
}

pub async fn spawn_app() -> TestApp {
    let settings = testing::service_settings("inventory");
    let shutdown = CancellationToken::new();
    let app = shop_inventory::build(&settings, shutdown.clone())
        .await
        .expect("build");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        url: format!("http://{addr}"),
        grpc: InventoryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc"),
        pool: testing::pool(&settings).await,
        saga: CommandChannel::new(
            &settings.kafka,
            topics::INVENTORY_COMMANDS,
            topics::INVENTORY_EVENTS,
            TENANT,
        ),
        settings,
        shutdown,
    }
}

pub fn items(lines: &[(&str, u32)]) -> Vec<LineItem> {
    lines
        .iter()
        .map(|(sku, quantity)| LineItem {
            sku: (*sku).into(),
            quantity: *quantity,
            unit_price: None,
        })
        .collect()
}

impl TestApp {
    pub async fn restock(&self, sku: &str, quantity: u32) {
        self.grpc
            .clone()
            .restock(RestockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
                quantity,
            })
            .await
            .expect("restock");
    }

    /// (available, reserved)
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let s = self
            .grpc
            .clone()
            .get_stock(GetStockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
            })
            .await
            .expect("get_stock")
            .into_inner();
        (s.available, s.reserved)
    }

    pub fn command(
        &self,
        event_type: &str,
        order_id: &str,
        payload: &impl prost::Message,
    ) -> EventEnvelope {
        self.saga.command(event_type, order_id, payload)
    }

    pub async fn send(&self, command: &EventEnvelope) {
        self.saga.send(command).await;
    }

    /// The next reply about `order_id` (stock-level facts skipped).
    pub async fn reply(&self, order_id: &str) -> EventEnvelope {
        self.saga
            .next_about(order_id, &[topics::types::STOCK_LEVEL_CHANGED])
            .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.pool.close().await;
        testing::drop_database(&self.settings).await;
    }
}
