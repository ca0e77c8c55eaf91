//! The Elasticsearch-API backend, through the `opensearch` crate (the client OpenSearch tests
//! against its 2.x servers). The native stack and docker-compose run OpenSearch 2.19; its
//! contract test runs against the native node in every `make test`.
//!
//! The version check happens inside the server: a scripted upsert replaces the document only if
//! the incoming version is newer, and keeps the stock it has. Writes do not force a refresh: the
//! index refreshes every 250 ms ([`REFRESH_INTERVAL`]), which bounds how long a change takes to
//! be searchable. (A forced refresh per write made the feed fall behind a demo burst: each write
//! then cost 15-40 ms, and a product waited 3.4 s behind the stock events queued before it.)

use anyhow::Context;
use opensearch::{
    BulkParts, GetParts, OpenSearch, SearchParts, UpdateParts,
    http::{StatusCode, request::JsonBody, transport::Transport},
    indices::{IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts, IndicesRefreshParts},
};
use serde_json::{Value, json};

use super::{Hits, IndexedProduct, Query, SearchBackend, Sort};

/// How often the index makes new writes searchable (the server's default is 1 s).
pub const REFRESH_INTERVAL: &str = "250ms";

pub struct Elastic {
    client: OpenSearch,
    index: String,
}

fn client(url: &str) -> anyhow::Result<OpenSearch> {
    Ok(OpenSearch::new(Transport::single_node(url)?))
}

impl Elastic {
    /// Connects and creates the index with its mapping if it does not exist.
    pub async fn connect(url: &str, index: &str) -> anyhow::Result<Self> {
        let client = client(url)?;
        let exists = client
            .indices()
            .exists(IndicesExistsParts::Index(&[index]))
            .send()
            .await
            .context("search server unreachable")?;
        if exists.status_code() == StatusCode::NOT_FOUND {
            let created = client
                .indices()
                .create(IndicesCreateParts::Index(index))
                .body(json!({
                    "mappings": { "properties": {
                        "sku": { "type": "keyword" },
                        "name": { "type": "text", "fields": { "sort": { "type": "keyword", "normalizer": "lowercase" } } },
                        "description": { "type": "text" },
                        "category": { "type": "keyword" },
                        "price_minor": { "type": "long" },
                        "currency": { "type": "keyword" },
                        "stock": { "type": "long" },
                        "version": { "type": "long" },
                        "listed": { "type": "boolean" }
                    } },
                    "settings": {
                        "refresh_interval": REFRESH_INTERVAL,
                        "analysis": { "normalizer": { "lowercase": { "type": "custom", "filter": ["lowercase"] } } }
                    }
                }))
                .send()
                .await?;
            // Another instance may have created it meanwhile.
            if !created.status_code().is_success()
                && created.status_code() != StatusCode::BAD_REQUEST
            {
                anyhow::bail!("cannot create index {index}: {}", created.status_code());
            }
        }
        Ok(Self {
            client,
            index: index.to_owned(),
        })
    }
}

/// Deletes `index` if it exists (the tests' per-test indices).
pub async fn delete_index(url: &str, index: &str) -> anyhow::Result<()> {
    let r = client(url)?
        .indices()
        .delete(IndicesDeleteParts::Index(&[index]))
        .send()
        .await
        .context("search server unreachable")?;
    if r.status_code() != StatusCode::NOT_FOUND {
        ok_json(r).await?;
    }
    Ok(())
}

async fn ok_json(r: opensearch::http::response::Response) -> anyhow::Result<Value> {
    let status = r.status_code();
    let body: Value = r.json().await?;
    if !status.is_success() {
        anyhow::bail!("search server {status}: {body}");
    }
    Ok(body)
}

#[async_trait::async_trait]
impl SearchBackend for Elastic {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    async fn upsert_product(&self, p: IndexedProduct) -> anyhow::Result<bool> {
        let doc = serde_json::to_value(IndexedProduct {
            listed: true,
            ..p.clone()
        })?;
        let r = self
            .client
            .update(UpdateParts::IndexId(&self.index, &p.sku))
            .retry_on_conflict(5)
            .body(json!({
                "scripted_upsert": true,
                "script": {
                    "lang": "painless",
                    "source": "if (ctx._source.version == null || ctx._source.version < params.p.version) { \
                                 def stock = ctx._source.stock == null ? params.p.stock : ctx._source.stock; \
                                 ctx._source.putAll(params.p); ctx._source.stock = stock; \
                               } else { ctx.op = 'noop'; }",
                    "params": { "p": doc }
                },
                "upsert": {}
            }))
            .send()
            .await?;
        let body = ok_json(r).await?;
        Ok(body["result"] != "noop")
    }

    async fn set_stock(&self, sku: &str, stock: i64) -> anyhow::Result<()> {
        let r = self
            .client
            .update(UpdateParts::IndexId(&self.index, sku))
            .retry_on_conflict(5)
            .body(json!({
                "script": { "lang": "painless", "source": "ctx._source.stock = params.s", "params": { "s": stock } },
                "upsert": IndexedProduct::stock_only(sku, stock)
            }))
            .send()
            .await?;
        ok_json(r).await.map(|_| ())
    }

    /// One `_bulk` request of scripted updates (the same as [`Self::set_stock`]'s); any item
    /// that failed fails the call.
    async fn set_stocks(&self, levels: &[(String, i64)]) -> anyhow::Result<()> {
        if levels.is_empty() {
            return Ok(());
        }
        let mut body: Vec<JsonBody<Value>> = Vec::with_capacity(levels.len() * 2);
        for (sku, stock) in levels {
            body.push(json!({ "update": { "_id": sku, "retry_on_conflict": 5 } }).into());
            body.push(
                json!({
                    "script": { "lang": "painless", "source": "ctx._source.stock = params.s", "params": { "s": stock } },
                    "upsert": IndexedProduct::stock_only(sku, *stock)
                })
                .into(),
            );
        }
        let r = self
            .client
            .bulk(BulkParts::Index(&self.index))
            .body(body)
            .send()
            .await?;
        let answer = ok_json(r).await?;
        if answer["errors"].as_bool().unwrap_or(true) {
            let first = answer["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["update"]["error"].is_object()))
                .map(|i| i["update"]["error"].to_string())
                .unwrap_or_default();
            anyhow::bail!("bulk stock update failed: {first}");
        }
        Ok(())
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let r = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&self.index]))
            .send()
            .await?;
        ok_json(r).await.map(|_| ())
    }

    async fn search(&self, q: &Query) -> anyhow::Result<Hits> {
        let mut must = vec![json!({ "term": { "listed": true } })];
        if !q.text.trim().is_empty() {
            must.push(json!({ "multi_match": { "query": q.text, "fields": ["name", "description"], "operator": "and" } }));
        }
        let mut filter = vec![];
        if let Some(c) = &q.category {
            filter.push(json!({ "term": { "category": c } }));
        }
        if q.min_price_minor.is_some() || q.max_price_minor.is_some() {
            filter.push(json!({ "range": { "price_minor": { "gte": q.min_price_minor, "lte": q.max_price_minor } } }));
        }
        if q.in_stock_only {
            filter.push(json!({ "range": { "stock": { "gte": 1 } } }));
        }
        let sort = match q.sort {
            Sort::Relevance => json!(["_score"]),
            Sort::PriceAsc => json!([{ "price_minor": "asc" }]),
            Sort::PriceDesc => json!([{ "price_minor": "desc" }]),
            Sort::Name => json!([{ "name.sort": "asc" }]),
        };
        let r = self
            .client
            .search(SearchParts::Index(&[&self.index]))
            .body(json!({
                "query": { "bool": { "must": must, "filter": filter } },
                "sort": sort,
                "from": q.offset,
                "size": q.limit.max(1),
                "track_total_hits": true
            }))
            .send()
            .await?;
        let body = ok_json(r).await?;
        let products = body["hits"]["hits"]
            .as_array()
            .map(|hits| {
                hits.iter()
                    .filter_map(|h| serde_json::from_value(h["_source"].clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Hits {
            products,
            total: body["hits"]["total"]["value"].as_u64().unwrap_or(0),
        })
    }

    async fn get(&self, sku: &str) -> anyhow::Result<Option<IndexedProduct>> {
        let r = self
            .client
            .get(GetParts::IndexId(&self.index, sku))
            .send()
            .await?;
        if r.status_code() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = ok_json(r).await?;
        Ok(serde_json::from_value(body["_source"].clone()).ok())
    }
}
