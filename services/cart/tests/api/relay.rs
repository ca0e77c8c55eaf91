//! The cart's outbox on the one relay loop: an entry the broker refuses for good is parked, the
//! other carts' events move on, the parked cart's later events wait behind it.

use std::time::Duration;

use redis::AsyncCommands;
use shop_cart::relay;
use shop_messaging::{NewEvent, events::SmokeTick, testing, testing::CommandChannel, topics};
use tokio_util::sync::CancellationToken;

async fn add(
    redis: &mut redis::aio::ConnectionManager,
    stream: &str,
    e: &NewEvent,
    payload: Vec<u8>,
) {
    let _: String = redis
        .xadd(
            stream,
            "*",
            &[
                ("event_id", e.envelope.event_id.as_bytes().to_vec()),
                ("topic", e.topic.as_bytes().to_vec()),
                ("key", e.envelope.aggregate_id.as_bytes().to_vec()),
                ("payload", payload),
            ],
        )
        .await
        .expect("xadd");
}

#[tokio::test]
async fn an_entry_the_broker_refuses_for_good_is_parked_and_the_other_carts_move_on() {
    let kafka = testing::service_settings("cart").kafka;
    let topic = kafka.topic(topics::CART_EVENTS);
    kafka.ensure_topics(&[&topic]).await.expect("topic");
    let events = CommandChannel::new(&kafka, topics::CART_EVENTS, topics::CART_EVENTS, "t");
    let client =
        redis::Client::open(shop_core::config::RedisSettings::default().url.as_str()).expect("url");
    let mut redis = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    let stream = shop_cart::store::outbox_stream(&kafka.topic_prefix);
    let tick = |key: &str, n: u64| {
        NewEvent::new(
            &topic,
            "smoke.tick",
            "cart",
            key,
            &SmokeTick { sequence: n },
        )
    };
    // big:1 is 2 MB, past the producer's message.max.bytes; big:2 must wait behind it.
    add(&mut redis, &stream, &tick("big", 1), vec![7; 2 << 20]).await;
    let big2 = tick("big", 2);
    add(
        &mut redis,
        &stream,
        &big2,
        prost::Message::encode_to_vec(&big2.envelope),
    )
    .await;
    let other = tick("other-cart", 1);
    add(
        &mut redis,
        &stream,
        &other,
        prost::Message::encode_to_vec(&other.envelope),
    )
    .await;
    let stop = CancellationToken::new();
    let relay = relay::relay(
        redis.clone(),
        stream.clone(),
        &kafka,
        Duration::from_millis(50),
    )
    .expect("relay");
    let task = tokio::spawn(relay.run(stop.clone()));
    // The other cart's event, behind the refused one in the stream, goes out.
    events.next_about("other-cart", &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parked: std::collections::HashMap<String, String> = loop {
        let parked: std::collections::HashMap<String, String> = redis
            .hgetall(format!("{stream}:parked"))
            .await
            .expect("parked");
        if !parked.is_empty() || tokio::time::Instant::now() > deadline {
            break parked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parked.len(), 1, "big:1 parked");
    assert!(
        parked.values().all(|e| e.contains("too large")),
        "{parked:?}"
    );
    let left: usize = redis.xlen(&stream).await.expect("xlen");
    assert_eq!(
        left, 2,
        "big:1 (parked) and big:2 (waiting behind it) stay in the stream"
    );

    // An operator drops the entry that can never go, and redrives: big:2 follows.
    let big1 = parked.keys().next().expect("id").clone();
    let _: i64 = redis.xdel(&stream, &[&big1]).await.expect("xdel");
    assert_eq!(relay::redrive(&redis, &stream).await.expect("redrive"), 1);
    let e = events.next_about("big", &[]).await;
    assert_eq!(e.event_id, big2.envelope.event_id);
    stop.cancel();
    task.await.expect("join").expect("relay");
    let _: () = redis.del(&stream).await.expect("cleanup");
}
