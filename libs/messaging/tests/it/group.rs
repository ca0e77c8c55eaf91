//! A member dies without leaving its group and a new one joins before the dead one's session
//! expires (a crashed pod and its replacement). The new member must end up consuming every
//! partition, without any help from our code: the group coordinator expires the dead member
//! and rebalances. (An earlier broker left the new member with none; this test is why the
//! platform no longer carries a guard against that.)

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{
    consumer::Consumer,
    producer::{FutureProducer, FutureRecord},
};
use shop_messaging::{EventEnvelope, NewEvent, consumer};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const VICTIM_GROUP: &str = "SHOP_TEST_VICTIM_GROUP";
const VICTIM_TOPIC: &str = "SHOP_TEST_VICTIM_TOPIC";

/// The member that gets killed: run as a child process by the test below. It joins, says
/// `ASSIGNED` once it has partitions, and keeps heartbeating until it is SIGKILLed.
#[tokio::test]
#[ignore = "a child process of the_member_that_replaces_a_killed_one_consumes_every_partition"]
async fn victim_member() {
    let (Ok(group), Ok(topic)) = (std::env::var(VICTIM_GROUP), std::env::var(VICTIM_TOPIC)) else {
        return;
    };
    let member = kafka().consumer(&group).expect("consumer");
    member.subscribe(&[&topic]).expect("subscribe");
    let mut said = false;
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(100), member.recv()).await;
        if !said && member.assignment().is_ok_and(|a| a.count() > 0) {
            println!("ASSIGNED");
            said = true;
        }
    }
}

#[tokio::test]
async fn the_member_that_replaces_a_killed_one_consumes_every_partition() {
    init_logs();
    let settings = kafka();
    let topic = topic(&settings, "group").await;
    let group = format!("group-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();

    let mut victim = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "group::victim_member",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(VICTIM_GROUP, &group)
        .env(VICTIM_TOPIC, &topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the victim");
    let stdout = victim.stdout.take().expect("stdout");
    let assigned = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("ASSIGNED"))
    });
    let assigned = tokio::time::timeout(Duration::from_secs(60), assigned).await;
    println!("victim assigned after {:?}", started.elapsed());
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reaped");
    assert!(
        matches!(assigned, Ok(Ok(true))),
        "the victim never got partitions"
    );

    // Join while the dead member is still in the group, late enough in its session that the
    // rebalance its expiry triggers overlaps the new member's join.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let stop = CancellationToken::new();
    let joined = Instant::now();
    let member = {
        let (settings, group, topic, seen, stop) = (
            settings.clone(),
            group.clone(),
            topic.clone(),
            seen.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            consumer::run(
                &settings,
                &group,
                &[&topic],
                stop,
                |event: EventEnvelope| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().expect("lock").insert(event.event_id);
                        Ok(())
                    }
                },
            )
            .await
        })
    };

    // Two events on every partition.
    let producer: FutureProducer = settings
        .producer(Duration::from_secs(10))
        .expect("producer");
    for partition in 0..settings.partitions {
        for n in 0..2 {
            let event = NewEvent::new(&topic, "test.ping", "test", format!("{partition}-{n}"), &());
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key(&event.envelope.aggregate_id)
                        .payload(&event.envelope.encode_to_vec()),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    }
    let expected = 2 * settings.partitions as usize;
    eventually(
        Duration::from_secs(120),
        "the new member consumed every partition",
        || {
            let seen = seen.clone();
            async move { seen.lock().expect("lock").len() == expected }
        },
    )
    .await;
    println!(
        "the new member had every event {:?} after joining",
        joined.elapsed()
    );
    stop.cancel();
    member.await.expect("member task").expect("member");
    println!("member stopped after {:?}", started.elapsed());
}
