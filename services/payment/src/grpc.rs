//! The gRPC adapter: protobuf in, validated domain values, repository, protobuf out.

use shop_core::{ServiceError, fields, grpc::page_size};
use shop_proto::payment::{
    Account, GetAccountRequest, ListMovementsRequest, ListMovementsResponse, Movement,
    OpenAccountRequest, payment_service_server::PaymentService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Amount, Money},
    repository,
};

pub struct Payment {
    pool: PgPool,
}

impl Payment {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(account_id: &str, (tenant, opening, balance): repository::Account) -> Account {
    Account {
        account_id: account_id.to_owned(),
        tenant_id: tenant,
        opening_balance: Some(opening.to_proto()),
        balance: Some(balance.to_proto()),
    }
}

#[tonic::async_trait]
impl PaymentService for Payment {
    async fn open_account(
        &self,
        request: Request<OpenAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let r = request.into_inner();
        let account_id = &fields::key("account_id", &r.account_id, fields::MAX_ID)?;
        let tenant = fields::TenantId::parse("tenant_id", &r.tenant_id)?;
        let tenant = tenant.as_str();
        let opening = Money::parse(
            "opening_balance",
            r.opening_balance.as_ref(),
            Amount::NonNegative,
        )?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        match repository::open_account(&mut conn, account_id, tenant, opening)
            .await
            .map_err(ServiceError::from)?
        {
            Ok(account) => Ok(Response::new(to_proto(account_id, account))),
            Err(_) => Err(ServiceError::FailedPrecondition(format!(
                "account {account_id} already exists with other terms"
            ))
            .into()),
        }
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let r = request.into_inner();
        let account_id = &fields::key("account_id", &r.account_id, fields::MAX_ID)?;
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let account = repository::account(&mut conn, account_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("account {account_id}")))?;
        Ok(Response::new(to_proto(account_id, account)))
    }

    async fn list_movements(
        &self,
        request: Request<ListMovementsRequest>,
    ) -> Result<Response<ListMovementsResponse>, Status> {
        let r = request.into_inner();
        let account_id = &fields::key("account_id", &r.account_id, fields::MAX_ID)?;
        let page = r.page.unwrap_or_default();
        let limit = page_size(page.page_size, 50, 500);
        let after = match fields::page_token("page.page_token", &page.page_token)? {
            "" => 0,
            t => t.parse::<i64>().map_err(|_| {
                ServiceError::invalid("page.page_token", "is not a token this service issued")
            })?,
        };
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        let (_, opening, _) = repository::account(&mut conn, account_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("account {account_id}")))?;
        let rows = repository::movements(&mut conn, account_id, after, i64::from(limit))
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match rows.last() {
            Some((id, ..)) if rows.len() == limit as usize => id.to_string(),
            _ => String::new(),
        };
        let movements = rows
            .into_iter()
            .map(|(movement_id, order_id, kind, amount_minor, at)| Movement {
                movement_id,
                order_id,
                kind,
                amount: Some(
                    Money {
                        minor: amount_minor,
                        ..opening
                    }
                    .to_proto(),
                ),
                at: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: at.timestamp_subsec_nanos() as i32,
                }),
            })
            .collect();
        Ok(Response::new(ListMovementsResponse {
            movements,
            next_page_token,
        }))
    }
}
