//! The offered load and the terminal events it is timed against.
//!
//! - [`Terminals`]: a consumer of the order events topic, started before any order is sent,
//!   that notes when the bench first receives each order's `order.completed` or
//!   `order.cancelled` (by the bench's own clock; later duplicates are counted, not kept).
//! - [`Driver`]: open-loop placement at a fixed rate. Order `i` is due at `start + i / rate`
//!   and is sent from its own task, so a slow answer never delays the next order; latencies are
//!   measured from the *due* instant (a bench that falls behind cannot hide that as lower
//!   latency), and how late the bench itself was is reported as the send lag.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use shop_messaging::{EventEnvelope, kafka::KafkaSettings, topics};
use shop_proto::{
    common::{Address, LineItem, Money},
    order::{PlaceOrderRequest, PlaceOrderResponse, order_service_client::OrderServiceClient},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use super::stats::{self, Rng};

/// When the bench received an order's terminal event.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    pub at: Instant,
    pub completed: bool,
}

/// By order id (parsed: the comparison does not depend on how the id is spelled).
type Seen = Arc<Mutex<HashMap<Uuid, Terminal>>>;

pub struct Terminals {
    seen: Seen,
    duplicates: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl Terminals {
    /// Starts reading `<prefix>shop.order.events` from its current end. The partitions are
    /// assigned at their high watermarks read here, so every event written after this returns
    /// is seen, without waiting for a group rebalance.
    pub async fn start(kafka: &KafkaSettings, run: &str) -> anyhow::Result<Self> {
        let topic = kafka.topic(topics::ORDER_EVENTS);
        let mut config = kafka.consumer_config(&format!("bench-saga-{run}"));
        config
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest");
        let consumer: Arc<StreamConsumer> =
            Arc::new(config.create().context("cannot create Kafka consumer")?);
        let (c, t) = (consumer.clone(), topic.clone());
        let assignment = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let metadata = c.fetch_metadata(Some(&t), METADATA_TIMEOUT)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|m| m.name() == t && m.error().is_none())
                .flat_map(|m| m.partitions().iter().map(|p| p.id()))
                .collect();
            anyhow::ensure!(
                !partitions.is_empty(),
                "topic {t} not found (the services create it at start-up with their \
                 SHOP__KAFKA__TOPIC_PREFIX; shopctl reads the same variable)"
            );
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                let (_, high) = c.fetch_watermarks(&t, p, METADATA_TIMEOUT)?;
                tpl.add_partition_offset(&t, p, Offset::Offset(high))?;
            }
            Ok(tpl)
        })
        .await??;
        consumer.assign(&assignment)?;
        let seen: Seen = Arc::default();
        let duplicates = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(listen(
            consumer,
            seen.clone(),
            duplicates.clone(),
            stop.clone(),
        ));
        Ok(Self {
            seen,
            duplicates,
            stop,
            task,
        })
    }

    /// The terminal of each of `ids` (one lock for all).
    pub fn lookup<'a>(&self, ids: impl IntoIterator<Item = &'a Uuid>) -> Vec<Option<Terminal>> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.into_iter().map(|id| seen.get(id).copied()).collect()
    }

    /// Terminal events received again for an order (at-least-once delivery).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "terminal listener ended badly");
        }
    }
}

async fn listen(
    consumer: Arc<StreamConsumer>,
    seen: Seen,
    duplicates: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let at = Instant::now();
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "order events consume error");
                continue;
            }
        };
        let Ok(event) = EventEnvelope::decode(msg.payload().unwrap_or_default()) else {
            continue;
        };
        let completed = match event.event_type.as_str() {
            topics::types::ORDER_COMPLETED => true,
            topics::types::ORDER_CANCELLED => false,
            _ => continue,
        };
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            continue;
        };
        let mut seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.entry(id) {
            Entry::Occupied(_) => {
                duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Entry::Vacant(v) => {
                v.insert(Terminal { at, completed });
            }
        }
    }
}

/// The answers to one rate's orders.
pub struct Placed {
    pub first_due: Instant,
    pub last_due: Instant,
    pub sent: usize,
    /// (order id, due instant) of every accepted order.
    pub accepted: Vec<(Uuid, Instant)>,
    pub shed: usize,
    pub errors: BTreeMap<String, usize>,
    /// Due -> sent (µs): how late the bench itself was.
    pub send_lag: Histogram<u64>,
    /// Due -> PlaceOrder answered (µs), every answer.
    pub answer: Histogram<u64>,
}

type Answer = (Instant, Instant, Result<PlaceOrderResponse, tonic::Status>);

pub struct Driver {
    clients: Vec<OrderServiceClient<Channel>>,
    run: String,
    skus: Vec<String>,
    accounts: Vec<String>,
    hot_key: bool,
    rng: Rng,
}

impl Driver {
    pub fn new(
        clients: Vec<OrderServiceClient<Channel>>,
        run: &str,
        skus: Vec<String>,
        accounts: Vec<String>,
        hot_key: bool,
        rng: Rng,
    ) -> Self {
        Self {
            clients,
            run: run.to_owned(),
            skus,
            accounts,
            hot_key,
            rng,
        }
    }

    fn request(&mut self, label: &str, i: u64) -> PlaceOrderRequest {
        let (sku, account) = if self.hot_key {
            (0, 0)
        } else {
            (
                self.rng.below(self.skus.len()),
                self.rng.below(self.accounts.len()),
            )
        };
        PlaceOrderRequest {
            idempotency_key: format!("bench-{}-{label}-{i}", self.run),
            tenant_id: "bench".into(),
            customer_id: format!("bench-c-{}", self.rng.below(1000)),
            items: vec![LineItem {
                sku: self.skus.get(sku).cloned().unwrap_or_default(),
                quantity: 1,
                unit_price: Some(Money {
                    amount_minor: 999,
                    currency: "USD".into(),
                }),
            }],
            shipping_address: Some(Address {
                name: "Bench".into(),
                line1: "1 Bench St".into(),
                line2: String::new(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
            payment_account_id: self.accounts.get(account).cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Offers `rate` orders/s for `seconds`, then waits for every answer.
    pub async fn offer(&mut self, label: &str, rate: u32, seconds: u64) -> anyhow::Result<Placed> {
        let total = u64::from(rate) * seconds;
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut send_lag = stats::micros_histogram()?;
        let mut tasks: Vec<JoinHandle<Answer>> = Vec::with_capacity(total as usize);
        let start = Instant::now();
        let due = |i: u64| start + period.mul_f64(i as f64);
        for i in 0..total {
            let at = due(i);
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
            stats::record(&mut send_lag, Instant::now().saturating_duration_since(at));
            let request = self.request(label, i);
            let n = self.clients.len().max(1);
            let Some(client) = self.clients.get(i as usize % n) else {
                anyhow::bail!("no order service client");
            };
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let r = client.place_order(request).await.map(|r| r.into_inner());
                (at, Instant::now(), r)
            }));
        }
        let mut placed = Placed {
            first_due: start,
            last_due: due(total.saturating_sub(1)),
            sent: tasks.len(),
            accepted: Vec::with_capacity(tasks.len()),
            shed: 0,
            errors: BTreeMap::new(),
            send_lag,
            answer: stats::micros_histogram()?,
        };
        for t in tasks {
            let (at, answered, r) = t.await?;
            stats::record(&mut placed.answer, answered.saturating_duration_since(at));
            match r {
                Ok(PlaceOrderResponse { order: Some(o), .. }) => match Uuid::parse_str(&o.order_id)
                {
                    Ok(id) => placed.accepted.push((id, at)),
                    Err(_) => *placed.errors.entry("BadOrderId".into()).or_default() += 1,
                },
                Ok(_) => *placed.errors.entry("NoOrder".into()).or_default() += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => placed.shed += 1,
                Err(s) => *placed.errors.entry(format!("{:?}", s.code())).or_default() += 1,
            }
        }
        Ok(placed)
    }
}

/// Waits until every one of `ids` has its terminal event or `deadline` passes; returns whether
/// all ended.
pub async fn drain(terminals: &Terminals, ids: &[(Uuid, Instant)], deadline: Instant) -> bool {
    let mut pending: Vec<&Uuid> = ids.iter().map(|(id, _)| id).collect();
    loop {
        let ended = terminals.lookup(pending.iter().copied());
        let mut ended = ended.iter();
        pending.retain(|_| ended.next().is_some_and(Option::is_none));
        if pending.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
