//! The gRPC adapter: products (MongoDB, read-after-write for the writer: reads go to the primary
//! that took the write), search (the index, eventually consistent), recommendations (Redis).

use std::sync::Arc;

use shop_core::{ServiceError, fields, grpc::page_size};
use shop_messaging::{NewEvent, topics::types};
use shop_proto::{
    catalog::{
        CreateProductRequest, GetProductRequest, GetRecommendationsRequest,
        GetRecommendationsResponse, Product as ProductProto, Recommendation, SearchProductsRequest,
        SearchProductsResponse, SortBy, UpdateProductRequest,
        catalog_service_server::CatalogService,
    },
    common::Money,
    events::ProductChanged,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::Product,
    recommend::{self, Recommendations},
    search::{Query, SearchBackend, Sort},
    store::ProductStore,
};

pub struct Catalog {
    pub store: ProductStore,
    pub search: Arc<dyn SearchBackend>,
    pub recommendations: Recommendations,
    /// The prefixed `shop.catalog.events` topic.
    pub events_topic: String,
}

/// The `catalog.product_changed` event of `p` on `topic`, at the version the store gives the
/// write (the store passes it in).
pub fn product_changed(topic: &str, p: &Product) -> impl FnOnce(u64) -> NewEvent + use<> {
    let topic = topic.to_owned();
    let p = p.clone();
    move |version| {
        NewEvent::new(
            &topic,
            types::PRODUCT_CHANGED,
            "product",
            &p.sku,
            &ProductChanged {
                sku: p.sku.clone(),
                name: p.name.clone(),
                category: p.category.clone(),
                price: Some(p.price()),
                version,
                description: p.description.clone(),
                attributes: p.attributes.clone().into_iter().collect(),
            },
        )
    }
}

impl Catalog {
    fn changed(&self, p: &Product) -> impl FnOnce(u64) -> NewEvent + use<> {
        product_changed(&self.events_topic, p)
    }
}

/// Page tokens are the offset of the next page, as text.
fn offset(token: &str) -> Result<usize, ServiceError> {
    if fields::page_token("page.page_token", token)?.is_empty() {
        return Ok(0);
    }
    token
        .parse::<usize>()
        .ok()
        .filter(|o| *o <= 10_000)
        .ok_or_else(|| {
            ServiceError::invalid("page.page_token", "is not a token this service issued")
        })
}

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn create_product(
        &self,
        request: Request<CreateProductRequest>,
    ) -> Result<Response<ProductProto>, Status> {
        let p = Product::parse(request.get_ref().product.as_ref())?;
        let created = self.store.create(&p, self.changed(&p)).await?;
        Ok(Response::new(created.to_proto()))
    }

    async fn update_product(
        &self,
        request: Request<UpdateProductRequest>,
    ) -> Result<Response<ProductProto>, Status> {
        let r = request.get_ref();
        let p = Product::parse(r.product.as_ref())?;
        if r.expected_version == 0 {
            return Err(ServiceError::invalid(
                "expected_version",
                "is required (the version you read)",
            )
            .into());
        }
        // Versions are stored as int64 and the update writes expected + 1: anything larger
        // than that can allow was never read from this service.
        if r.expected_version >= i64::MAX as u64 {
            return Err(ServiceError::invalid(
                "expected_version",
                "is larger than any product version",
            )
            .into());
        }
        let updated = self
            .store
            .update(&p, r.expected_version, self.changed(&p))
            .await?;
        Ok(Response::new(updated.to_proto()))
    }

    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<ProductProto>, Status> {
        let sku = fields::Sku::parse("sku", &request.get_ref().sku)?.into_string();
        let p = self
            .store
            .get(&sku)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("product {sku}")))?;
        Ok(Response::new(p.to_proto()))
    }

    async fn search_products(
        &self,
        request: Request<SearchProductsRequest>,
    ) -> Result<Response<SearchProductsResponse>, Status> {
        let r = request.get_ref();
        let text = fields::optional_text("query", &r.query, fields::MAX_QUERY)?;
        let category = fields::optional_text("category", &r.category, 64)?;
        if r.min_price_minor < 0 || r.max_price_minor < 0 {
            return Err(ServiceError::invalid("min_price_minor", "must not be negative").into());
        }
        if r.max_price_minor > 0 && r.min_price_minor > r.max_price_minor {
            return Err(
                ServiceError::invalid("max_price_minor", "is below min_price_minor").into(),
            );
        }
        let page = r.page.clone().unwrap_or_default();
        let limit = page_size(page.page_size, 20, 100) as usize;
        let offset = offset(&page.page_token)?;
        let q = Query {
            text,
            category: (!category.is_empty()).then_some(category),
            min_price_minor: (r.min_price_minor > 0).then_some(r.min_price_minor),
            max_price_minor: (r.max_price_minor > 0).then_some(r.max_price_minor),
            in_stock_only: r.in_stock_only,
            sort: match r.sort() {
                SortBy::Relevance => Sort::Relevance,
                SortBy::PriceAsc => Sort::PriceAsc,
                SortBy::PriceDesc => Sort::PriceDesc,
                SortBy::Name => Sort::Name,
            },
            offset,
            limit,
        };
        let hits = self
            .search
            .search(&q)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("search: {e:#}")))?;
        let next = offset + hits.products.len();
        Ok(Response::new(SearchProductsResponse {
            next_page_token: if (next as u64) < hits.total && !hits.products.is_empty() {
                next.to_string()
            } else {
                String::new()
            },
            total_hits: hits.total,
            products: hits
                .products
                .into_iter()
                .map(|p| ProductProto {
                    sku: p.sku,
                    name: p.name,
                    description: p.description,
                    category: p.category,
                    price: Some(Money {
                        amount_minor: p.price_minor,
                        currency: p.currency,
                    }),
                    attributes: Default::default(),
                    stock: p.stock,
                    version: p.version,
                })
                .collect(),
        }))
    }

    async fn get_recommendations(
        &self,
        request: Request<GetRecommendationsRequest>,
    ) -> Result<Response<GetRecommendationsResponse>, Status> {
        let r = request.get_ref();
        let sku = fields::Sku::parse("sku", &r.sku)?.into_string();
        let limit = if r.limit == 0 { 5 } else { r.limit as usize };
        if limit > recommend::MAX_LIMIT {
            return Err(ServiceError::invalid(
                "limit",
                format!("must be at most {}", recommend::MAX_LIMIT),
            )
            .into());
        }
        let items = self
            .recommendations
            .for_sku(&sku, limit)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("redis: {e}")))?;
        Ok(Response::new(GetRecommendationsResponse {
            items: items
                .into_iter()
                .map(|(sku, score)| Recommendation { sku, score })
                .collect(),
        }))
    }
}
