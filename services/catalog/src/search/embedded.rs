//! The embedded search backend: a tantivy index in a directory of the catalog service. One
//! writer (tantivy allows one per index), every change committed and the reader reloaded before
//! the call returns, so what a caller indexed is searchable when it gets the answer. The work
//! runs on the blocking pool.

use std::{
    ops::Bound,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
    collector::{Count, TopDocs},
    query::{AllQuery, BooleanQuery, Occur, Query as TQuery, QueryParser, RangeQuery, TermQuery},
    schema::{Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value},
};

use super::{Hits, IndexedProduct, Query, SearchBackend, Sort};

#[derive(Clone, Copy)]
struct Fields {
    sku: Field,
    name: Field,
    description: Field,
    category: Field,
    price: Field,
    stock: Field,
    listed: Field,
    name_sort: Field,
    /// The whole [`IndexedProduct`], JSON, stored.
    doc: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        sku: b.add_text_field("sku", STRING | STORED),
        name: b.add_text_field("name", TEXT),
        description: b.add_text_field("description", TEXT),
        category: b.add_text_field("category", STRING),
        price: b.add_i64_field("price", INDEXED | tantivy::schema::FAST),
        stock: b.add_i64_field("stock", INDEXED | tantivy::schema::FAST),
        listed: b.add_u64_field("listed", INDEXED),
        name_sort: b.add_text_field("name_sort", STRING | tantivy::schema::FAST),
        doc: b.add_text_field("doc", STORED),
    };
    (b.build(), f)
}

struct Inner {
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
    index: Index,
    f: Fields,
}

#[derive(Clone)]
pub struct Embedded(Arc<Inner>);

impl Embedded {
    /// Opens the index in `dir` (created if missing); `None` keeps it in memory (tests).
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Self> {
        let (schema, f) = schema();
        let index = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("index dir {dir:?}"))?;
                let mmap = tantivy::directory::MmapDirectory::open(dir)?;
                Index::open_or_create(mmap, schema)?
            }
            None => Index::create_in_ram(schema),
        };
        let writer = index.writer_with_num_threads(1, 30_000_000)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self(Arc::new(Inner {
            writer: Mutex::new(writer),
            reader,
            index,
            f,
        })))
    }

    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> anyhow::Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = anyhow::Result<T>> {
        let inner = self.0.clone();
        async move { tokio::task::spawn_blocking(move || work(&inner)).await? }
    }
}

impl Inner {
    fn get(&self, sku: &str) -> anyhow::Result<Option<IndexedProduct>> {
        let searcher = self.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(self.f.sku, sku),
            IndexRecordOption::Basic,
        );
        let top = searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?;
        top.first().map(|(_, addr)| self.load(*addr)).transpose()
    }

    fn load(&self, addr: DocAddress) -> anyhow::Result<IndexedProduct> {
        let d: TantivyDocument = self.reader.searcher().doc(addr)?;
        let json = d
            .get_first(self.f.doc)
            .and_then(|v| v.as_str())
            .context("document without its stored form")?;
        Ok(serde_json::from_str(json)?)
    }

    /// Runs a read-then-write under the writer lock: every commit happens under it, so what
    /// `change` reads is what the write replaces (no lost update between two writers).
    fn exclusive<T>(
        &self,
        change: impl FnOnce(&Self, &mut IndexWriter) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("index writer poisoned"))?;
        change(self, &mut w)
    }

    /// Replaces the document of `p.sku` and makes it visible.
    fn put(&self, w: &mut IndexWriter, p: &IndexedProduct) -> anyhow::Result<()> {
        let f = self.f;
        let mut d = TantivyDocument::default();
        d.add_text(f.sku, &p.sku);
        d.add_text(f.name, &p.name);
        d.add_text(f.description, &p.description);
        d.add_text(f.category, &p.category);
        d.add_i64(f.price, p.price_minor);
        d.add_i64(f.stock, p.stock);
        d.add_u64(f.listed, u64::from(p.listed));
        d.add_text(f.name_sort, p.name.to_lowercase());
        d.add_text(f.doc, serde_json::to_string(p)?);
        w.delete_term(Term::from_field_text(f.sku, &p.sku));
        w.add_document(d)?;
        w.commit()?;
        self.reader.reload()?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SearchBackend for Embedded {
    fn name(&self) -> &'static str {
        "embedded (tantivy)"
    }

    async fn upsert_product(&self, p: IndexedProduct) -> anyhow::Result<bool> {
        self.blocking(move |inner| {
            inner.exclusive(|inner, w| {
                let current = inner.get(&p.sku)?;
                if current.as_ref().is_some_and(|c| c.version >= p.version) {
                    return Ok(false);
                }
                let stock = current.map_or(p.stock, |c| c.stock);
                inner.put(
                    w,
                    &IndexedProduct {
                        stock,
                        listed: true,
                        ..p
                    },
                )?;
                Ok(true)
            })
        })
        .await
    }

    async fn set_stock(&self, sku: &str, stock: i64) -> anyhow::Result<()> {
        let sku = sku.to_owned();
        self.blocking(move |inner| {
            inner.exclusive(|inner, w| {
                let doc = match inner.get(&sku)? {
                    Some(c) if c.stock == stock => return Ok(()),
                    Some(c) => IndexedProduct { stock, ..c },
                    None => IndexedProduct::stock_only(&sku, stock),
                };
                inner.put(w, &doc)
            })
        })
        .await
    }

    async fn search(&self, q: &Query) -> anyhow::Result<Hits> {
        let q = q.clone();
        self.blocking(move |inner| {
            let f = inner.f;
            let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = vec![(
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.listed, 1),
                    IndexRecordOption::Basic,
                )),
            )];
            if q.text.trim().is_empty() {
                clauses.push((Occur::Must, Box::new(AllQuery)));
            } else {
                let mut parser = QueryParser::for_index(&inner.index, vec![f.name, f.description]);
                parser.set_conjunction_by_default();
                // Lenient: a stray quote or colon in a shopper's query is text, not an error.
                let (parsed, _errors) = parser.parse_query_lenient(&q.text);
                clauses.push((Occur::Must, parsed));
            }
            if let Some(c) = &q.category {
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(f.category, c),
                        IndexRecordOption::Basic,
                    )),
                ));
            }
            if q.min_price_minor.is_some() || q.max_price_minor.is_some() {
                let lo = q.min_price_minor.map_or(Bound::Unbounded, |v| {
                    Bound::Included(Term::from_field_i64(f.price, v))
                });
                let hi = q.max_price_minor.map_or(Bound::Unbounded, |v| {
                    Bound::Included(Term::from_field_i64(f.price, v))
                });
                clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
            }
            if q.in_stock_only {
                clauses.push((
                    Occur::Must,
                    Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_i64(f.stock, 1)),
                        Bound::Unbounded,
                    )),
                ));
            }
            let query = BooleanQuery::new(clauses);
            let searcher = inner.reader.searcher();
            let limit = q.limit.max(1);
            let top = TopDocs::with_limit(limit).and_offset(q.offset);
            let (total, addrs): (usize, Vec<DocAddress>) = match q.sort {
                Sort::Relevance => {
                    let (n, docs) = searcher.search(&query, &(Count, top.order_by_score()))?;
                    (n, docs.into_iter().map(|(_, a)| a).collect())
                }
                Sort::PriceAsc | Sort::PriceDesc => {
                    let order = if q.sort == Sort::PriceAsc {
                        Order::Asc
                    } else {
                        Order::Desc
                    };
                    let (n, docs) = searcher.search(
                        &query,
                        &(Count, top.order_by_fast_field::<i64>("price", order)),
                    )?;
                    (n, docs.into_iter().map(|(_, a)| a).collect())
                }
                Sort::Name => {
                    let (n, docs) = searcher.search(
                        &query,
                        &(
                            Count,
                            top.order_by_string_fast_field("name_sort", Order::Asc),
                        ),
                    )?;
                    (n, docs.into_iter().map(|(_, a)| a).collect())
                }
            };
            let products = addrs
                .into_iter()
                .map(|a| inner.load(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Hits {
                products,
                total: total as u64,
            })
        })
        .await
    }

    async fn get(&self, sku: &str) -> anyhow::Result<Option<IndexedProduct>> {
        let sku = sku.to_owned();
        self.blocking(move |inner| inner.get(&sku)).await
    }
}
