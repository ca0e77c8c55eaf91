//! The gRPC adapter: protobuf in, validated domain values, repository, protobuf out.

use shop_core::{ServiceError, fields};
use shop_proto::shipping::{
    GetShipmentRequest, Shipment, ValidateAddressRequest, ValidateAddressResponse,
    shipping_service_server::ShippingService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    domain::{self, Refusal},
    repository,
};

pub struct Shipping {
    pool: PgPool,
    zones: Vec<String>,
}

impl Shipping {
    pub fn new(pool: PgPool, zones: Vec<String>) -> Self {
        Self { pool, zones }
    }
}

#[tonic::async_trait]
impl ShippingService for Shipping {
    async fn get_shipment(
        &self,
        request: Request<GetShipmentRequest>,
    ) -> Result<Response<Shipment>, Status> {
        let r = request.into_inner();
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let found = match (r.shipment_id.trim(), r.order_id.trim()) {
            ("", "") => {
                return Err(ServiceError::invalid("shipment_id", "or order_id is required").into());
            }
            ("", order_id) => {
                let order_id = &fields::key("order_id", order_id, fields::MAX_ID)?;
                let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
                repository::for_order(&mut tx, order_id)
                    .await
                    .map_err(ServiceError::from)?
            }
            (id, _) => {
                let id = fields::uuid("shipment_id", id)?;
                repository::by_id(&mut conn, id)
                    .await
                    .map_err(ServiceError::from)?
            }
        };
        let s = found.ok_or_else(|| ServiceError::NotFound("shipment".into()))?;
        Ok(Response::new(Shipment {
            shipment_id: s.shipment_id.to_string(),
            order_id: s.order_id,
            address: Some(s.address),
            status: s.status,
            updated_at: Some(prost_types::Timestamp {
                seconds: s.updated_at.timestamp(),
                nanos: s.updated_at.timestamp_subsec_nanos() as i32,
            }),
            reason: s.reason.unwrap_or_default(),
        }))
    }

    async fn validate_address(
        &self,
        request: Request<ValidateAddressRequest>,
    ) -> Result<Response<ValidateAddressResponse>, Status> {
        let r = request.into_inner();
        match domain::check("address", r.address.as_ref(), &self.zones) {
            Ok(()) => Ok(Response::new(ValidateAddressResponse {
                deliverable: true,
                reason: String::new(),
            })),
            Err(refusal @ Refusal::OutsideZones(_)) => Ok(Response::new(ValidateAddressResponse {
                deliverable: false,
                reason: refusal.to_string(),
            })),
            Err(Refusal::Invalid { field, message }) => {
                Err(ServiceError::invalid(field, message).into())
            }
        }
    }
}
