//! The gRPC adapter. Prices come from the catalog when an item is added (the line keeps the price
//! it was added at); checkout places the order through the order service with a key derived from
//! the cart and its version.

use shop_core::ServiceError;
use shop_messaging::{NewEvent, topics};
use shop_proto::{
    cart::{
        AddItemRequest, Cart as CartProto, CheckoutRequest, CheckoutResponse, GetCartRequest,
        RemoveItemRequest, SetQuantityRequest, cart_service_server::CartService,
    },
    catalog::{GetProductRequest, catalog_service_client::CatalogServiceClient},
    events::CartCheckedOut,
    order::{PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use tonic::{Code, Request, Response, Status, transport::Channel};

use crate::{
    domain::{self, Cart},
    store::{CartStore, Change},
};

pub struct Carts {
    pub store: CartStore,
    pub catalog: CatalogServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    /// The prefixed `shop.cart.events` topic.
    pub events_topic: String,
}

fn proto(session: &str, cart: &Cart) -> Result<CartProto, ServiceError> {
    Ok(CartProto {
        session_id: session.to_owned(),
        items: cart.items(),
        version: cart.v,
        total: Some(cart.total()?),
    })
}

/// A dependency's error, passed on with its meaning (not found stays not found).
fn upstream(what: &str, s: Status) -> ServiceError {
    match s.code() {
        Code::NotFound => ServiceError::NotFound(format!("{what}: {}", s.message())),
        Code::InvalidArgument | Code::FailedPrecondition => {
            ServiceError::FailedPrecondition(format!("{what}: {}", s.message()))
        }
        _ => ServiceError::Unavailable(format!("{what}: {}", s.message())),
    }
}

/// Whether the order service may have placed the order although the call failed (then the
/// cart stays frozen: a retry gets the order back, or the checkout lease runs out).
fn in_doubt(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

#[tonic::async_trait]
impl CartService for Carts {
    async fn add_item(
        &self,
        request: Request<AddItemRequest>,
    ) -> Result<Response<CartProto>, Status> {
        let r = request.get_ref();
        let session = domain::session_id(&r.session_id)?;
        let sku = domain::sku(&r.sku)?;
        let quantity = domain::quantity(r.quantity, &self.store.limits)?;
        let product = self
            .catalog
            .clone()
            .get_product(GetProductRequest {
                sku: sku.to_owned(),
            })
            .await
            .map_err(|s| upstream("product", s))?
            .into_inner();
        let price = product.price.unwrap_or_default();
        let cart = self
            .store
            .change(
                session,
                Change::Add {
                    sku,
                    quantity,
                    unit_price_minor: price.amount_minor,
                    currency: &price.currency,
                },
            )
            .await?;
        Ok(Response::new(proto(session, &cart)?))
    }

    async fn set_quantity(
        &self,
        request: Request<SetQuantityRequest>,
    ) -> Result<Response<CartProto>, Status> {
        let r = request.get_ref();
        let session = domain::session_id(&r.session_id)?;
        let sku = domain::sku(&r.sku)?;
        let quantity = domain::quantity(r.quantity, &self.store.limits)?;
        let cart = self
            .store
            .change(session, Change::Set { sku, quantity })
            .await?;
        Ok(Response::new(proto(session, &cart)?))
    }

    async fn remove_item(
        &self,
        request: Request<RemoveItemRequest>,
    ) -> Result<Response<CartProto>, Status> {
        let r = request.get_ref();
        let session = domain::session_id(&r.session_id)?;
        let sku = domain::sku(&r.sku)?;
        let cart = self.store.change(session, Change::Remove { sku }).await?;
        Ok(Response::new(proto(session, &cart)?))
    }

    async fn get_cart(
        &self,
        request: Request<GetCartRequest>,
    ) -> Result<Response<CartProto>, Status> {
        let session = domain::session_id(&request.get_ref().session_id)?;
        let cart = self.store.get(session).await?;
        Ok(Response::new(proto(session, &cart)?))
    }

    async fn checkout(
        &self,
        request: Request<CheckoutRequest>,
    ) -> Result<Response<CheckoutResponse>, Status> {
        let r = request.into_inner();
        let session = domain::session_id(&r.session_id)?.to_owned();
        let cart = self.store.begin_checkout(&session).await?;
        if cart.lines.is_empty() {
            return Err(ServiceError::FailedPrecondition("the cart is empty".into()).into());
        }
        // The same cart version always makes the same order: a double submit, or a retry after
        // a crash between placing and recording, gets the first order back.
        let placed = self
            .orders
            .clone()
            .place_order(PlaceOrderRequest {
                idempotency_key: Cart::checkout_key(&session, cart.v),
                tenant_id: r.tenant_id.clone(),
                customer_id: r.customer_id,
                items: cart.items(),
                shipping_address: r.shipping_address,
                payment_account_id: r.payment_account_id,
                ..Default::default()
            })
            .await;
        if let Err(s) = &placed
            && !in_doubt(s.code())
        {
            self.store.checkout_failed(&session, cart.v).await;
        }
        let placed = placed
            .map_err(|s| match (s.code(), &cart.checkout) {
                // The order service names the field, and it has the same name here.
                (Code::InvalidArgument, _) => s,
                // This version's key has an order, placed for another request.
                (Code::FailedPrecondition, Some(c)) if !c.order.is_empty() => {
                    ServiceError::FailedPrecondition(format!(
                        "cart {session} is checked out; order {} is in progress",
                        c.order
                    ))
                    .into()
                }
                _ => upstream("order", s).into(),
            })?
            .into_inner();
        let order_id = placed.order.map(|o| o.order_id).unwrap_or_default();
        let event = NewEvent::new(
            &self.events_topic,
            topics::types::CART_CHECKED_OUT,
            "cart",
            &session,
            &CartCheckedOut {
                cart_id: session.clone(),
                order_id: order_id.clone(),
            },
        )
        .tenant(&r.tenant_id)
        .correlation(&order_id);
        self.store
            .checked_out(&session, cart.v, &order_id, &event)
            .await?;
        if placed.created {
            metrics::counter!("cart_checkouts_total").increment(1);
        }
        Ok(Response::new(CheckoutResponse {
            order_id,
            created: placed.created,
        }))
    }
}
