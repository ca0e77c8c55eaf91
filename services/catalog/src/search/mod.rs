//! Product search behind one interface, two backends:
//!
//! - [`elastic::Elastic`] (the `opensearch` crate, the Elasticsearch API): the default on every
//!   stack; the native stack and docker-compose run OpenSearch 2.19;
//! - [`embedded::Embedded`] (tantivy, in the catalog process, an index directory on disk): the
//!   option without a JVM (`SHOP__SEARCH__BACKEND=embedded`).
//!
//! Both are fed the same way ([`crate::feed`]) from `catalog.product_changed` and
//! `inventory.stock_level_changed` events, and both pass the same contract tests
//! (`tests/api/search.rs`, run against every backend that is reachable).
//!
//! Idempotent and order-safe: a product is upserted only if its version is newer than the indexed
//! one; stock is a plain overwrite (events of one SKU arrive in order). A stock level that
//! arrives before its product is kept on an unlisted document that searches do not return.

pub mod elastic;
pub mod embedded;

use serde::{Deserialize, Serialize};

/// What the index holds per product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_minor: i64,
    pub currency: String,
    pub stock: i64,
    pub version: u64,
    /// False until the product itself was indexed (only its stock was known).
    pub listed: bool,
}

impl IndexedProduct {
    /// A document that only knows a stock level.
    pub fn stock_only(sku: &str, stock: i64) -> Self {
        Self {
            sku: sku.to_owned(),
            name: String::new(),
            description: String::new(),
            category: String::new(),
            price_minor: 0,
            currency: String::new(),
            stock,
            version: 0,
            listed: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// Full text over name and description; empty matches everything.
    pub text: String,
    pub category: Option<String>,
    pub min_price_minor: Option<i64>,
    pub max_price_minor: Option<i64>,
    pub in_stock_only: bool,
    pub sort: Sort,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hits {
    pub products: Vec<IndexedProduct>,
    pub total: u64,
}

#[async_trait::async_trait]
pub trait SearchBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Indexes `p` unless the index holds this version or a newer one (the stock already
    /// indexed is kept). Returns whether it changed the index. Searchable on return (embedded)
    /// or within the index's refresh interval (OpenSearch: 250 ms), or after [`Self::refresh`].
    async fn upsert_product(&self, p: IndexedProduct) -> anyhow::Result<bool>;
    /// Sets the stock of `sku`; searchable as for [`Self::upsert_product`].
    async fn set_stock(&self, sku: &str, stock: i64) -> anyhow::Result<()>;
    /// Sets the stock of several SKUs (each at most once), in one request where the backend
    /// has one; all or, on error, any subset of them (the feed retries the whole batch).
    async fn set_stocks(&self, levels: &[(String, i64)]) -> anyhow::Result<()> {
        for (sku, stock) in levels {
            self.set_stock(sku, *stock).await?;
        }
        Ok(())
    }
    /// Makes every write so far searchable now. The feed never calls it (a forced refresh per
    /// write would cap it at a few dozen events/s); tests that search right after writing do.
    async fn refresh(&self) -> anyhow::Result<()> {
        Ok(())
    }
    async fn search(&self, q: &Query) -> anyhow::Result<Hits>;
    /// The indexed document of `sku`, listed or not.
    async fn get(&self, sku: &str) -> anyhow::Result<Option<IndexedProduct>>;
}
