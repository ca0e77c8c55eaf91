//! The gRPC adapter: protobuf in, validated domain values, repository, protobuf out.

use shop_core::{ServiceError, fields};
use shop_messaging::outbox;
use shop_proto::inventory::{
    GetStockRequest, RestockRequest, StockLevel, inventory_service_server::InventoryService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    commands::level_changed,
    domain::{Sku, quantity},
    repository,
};

pub struct Inventory {
    pool: PgPool,
    events_topic: String,
}

impl Inventory {
    pub fn new(pool: PgPool, events_topic: String) -> Self {
        Self { pool, events_topic }
    }
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<StockLevel>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let sku = Sku::parse("sku", &r.sku).map_err(ServiceError::from)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let (available, reserved) = repository::stock(&mut conn, tenant, sku.as_str())
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("sku {}", sku.as_str())))?;
        Ok(Response::new(StockLevel {
            tenant_id: tenant.to_owned(),
            sku: sku.as_str().to_owned(),
            available,
            reserved,
        }))
    }

    async fn restock(
        &self,
        request: Request<RestockRequest>,
    ) -> Result<Response<StockLevel>, Status> {
        let r = request.into_inner();
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let sku = Sku::parse("sku", &r.sku).map_err(ServiceError::from)?;
        let q = quantity("quantity", r.quantity).map_err(ServiceError::from)?;
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let (available, reserved) = repository::restock(&mut tx, tenant, sku.as_str(), q)
            .await
            .map_err(ServiceError::from)?;
        outbox::enqueue(
            &mut tx,
            &level_changed(&self.events_topic, tenant, sku.as_str(), available),
        )
        .await
        .map_err(ServiceError::from)?;
        tx.commit().await.map_err(ServiceError::from)?;
        shop_messaging::wake::committed();
        Ok(Response::new(StockLevel {
            tenant_id: tenant.to_owned(),
            sku: sku.as_str().to_owned(),
            available,
            reserved,
        }))
    }
}
