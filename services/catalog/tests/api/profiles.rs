//! Profiles across regions, against the real MongoDB-wire server and broker: each region a
//! catalog instance serving one replica (its own database), updates through Kafka.
//! Causal delivery (an effect never before its cause, even when Kafka hands them over reversed
//! and twice), convergence of concurrent writes, and monotonic reads with a session token
//! against a lagging region.

use std::{collections::HashMap, time::Duration};

use shop_catalog::regions::profiles::profile_updated;
use shop_crdt::causal::Replica;
use shop_messaging::{testing::CommandChannel, topics};
use shop_proto::catalog::{GetProfileRequest, Profile, SessionToken, UpdateProfileRequest};
use tonic::Code;

use crate::helpers::*;

/// Two instances on one environment (same databases, same topics): `eu` and `us`, `us` applying
/// each of eu's updates `us_delay_ms` late.
pub async fn two_regions(us_delay_ms: u64) -> (Catalog, Catalog) {
    let base = catalog_settings();
    let mut eu = base.clone();
    eu.regions.serve = "eu".into();
    let mut us = base;
    us.regions.serve = "us".into();
    us.regions.apply_delay_ms = us_delay_ms;
    (spawn_catalog_with(eu).await, spawn_catalog_with(us).await)
}

fn user() -> String {
    format!("user-{}", uuid::Uuid::now_v7().simple())
}

fn set(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

async fn write(
    c: &Catalog,
    region: &str,
    user: &str,
    pairs: &[(&str, &str)],
    session: Option<SessionToken>,
) -> Profile {
    c.profiles
        .clone()
        .update_profile(UpdateProfileRequest {
            region: region.into(),
            user_id: user.into(),
            set: set(pairs),
            session,
            ..Default::default()
        })
        .await
        .expect("update profile")
        .into_inner()
}

async fn read(
    c: &Catalog,
    region: &str,
    user: &str,
    session: Option<SessionToken>,
    wait_ms: u32,
) -> Result<Profile, tonic::Status> {
    c.profiles
        .clone()
        .get_profile(GetProfileRequest {
            region: region.into(),
            user_id: user.into(),
            session,
            wait_ms,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Reads until `done` holds, within 20 s.
async fn read_until(
    c: &Catalog,
    region: &str,
    user: &str,
    done: impl Fn(&Profile) -> bool,
) -> Profile {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let p = read(c, region, user, None, 0).await.expect("read");
        if done(&p) {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{region} never got there: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_lagging_region_makes_a_session_wait_or_sends_it_to_the_region_that_has_its_writes() {
    let (eu, us) = two_regions(1500).await;
    let u = user();
    let written = write(&eu, "eu", &u, &[("address.home", "1 Quay St")], None).await;
    let token = written.session.clone().expect("a token");
    assert_eq!(token.clock.get("eu"), Some(&1));
    // Without a session, us answers with what it has (eventual): nothing yet.
    let stale = read(&us, "us", &u, None, 0).await.expect("read");
    assert!(stale.fields.is_empty(), "{stale:?}");
    // With the session, us is behind it: not waiting, it refuses and names eu.
    let refused = read(&us, "us", &u, Some(token.clone()), 0)
        .await
        .expect_err("behind");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("region eu"),
        "{}",
        refused.message()
    );
    // eu itself serves it at once (read-your-writes).
    let at_eu = read(&eu, "eu", &u, Some(token.clone()), 0)
        .await
        .expect("eu has it");
    assert_eq!(
        at_eu.fields.get("address.home").map(String::as_str),
        Some("1 Quay St")
    );
    // Waiting (up to 2 s a call, as often as it takes), us catches up and serves it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let waited = loop {
        match read(&us, "us", &u, Some(token.clone()), 2000).await {
            Ok(p) => break p,
            Err(e) if e.code() == Code::FailedPrecondition => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "us never caught up: {e:?}"
                );
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(
        waited.fields.get("address.home").map(String::as_str),
        Some("1 Quay St")
    );
    // Monotonic: the session's next read anywhere is never older.
    let token = waited.session.expect("token");
    let again = read(&eu, "eu", &u, Some(token.clone()), 0)
        .await
        .expect("read");
    assert_eq!(again.fields, waited.fields);
    // A write at us with the session comes after what the session saw, and eu shows the
    // default address only together with the address.
    let d = write(&us, "us", &u, &[("default_address", "home")], Some(token)).await;
    assert_eq!(
        d.session.as_ref().map(|t| t.clock.get("us")),
        Some(Some(&1))
    );
    let at_eu = read_until(&eu, "eu", &u, |p| p.fields.contains_key("default_address")).await;
    assert!(at_eu.fields.contains_key("address.home"));
    eu.stop().await;
    us.stop().await;
}

#[tokio::test]
async fn an_update_kafka_delivers_before_its_cause_and_twice_is_held_back_until_the_cause_arrives()
{
    let (eu, us) = two_regions(0).await;
    // The test plays region eu's writer, publishing straight to the topic in the wrong order.
    let (u, mut writer) = (user(), Replica::new());
    let topic = us.settings.kafka.topic(topics::CATALOG_PROFILES);
    let address = writer.write(
        "eu",
        [("address.home".into(), Some("1 Quay St".into()))].into(),
    );
    let default = writer.write(
        "eu",
        [("default_address".into(), Some("home".into()))].into(),
    );
    let channel = CommandChannel::new(
        &us.settings.kafka,
        topics::CATALOG_PROFILES,
        topics::CATALOG_PROFILES,
        "",
    );
    let effect = profile_updated(&topic, &u, &default).envelope;
    channel.send(&effect).await;
    channel.send(&effect).await;
    // us keeps it waiting, and shows none of it.
    let held = read_until(&us, "us", &u, |p| p.waiting == 1).await;
    assert!(
        held.fields.is_empty(),
        "effect shown before its cause: {held:?}"
    );
    channel
        .send(&profile_updated(&topic, &u, &address).envelope)
        .await;
    let both = read_until(&us, "us", &u, |p| p.waiting == 0 && !p.fields.is_empty()).await;
    assert_eq!(
        both.fields.get("default_address").map(String::as_str),
        Some("home")
    );
    assert_eq!(
        both.fields.get("address.home").map(String::as_str),
        Some("1 Quay St")
    );
    assert_eq!(both.session.expect("token").clock.get("eu"), Some(&2));
    // A late copy of either changes nothing.
    channel.send(&effect).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = read(&us, "us", &u, None, 0).await.expect("read");
    assert_eq!((after.fields, after.waiting), (both.fields, 0));
    eu.stop().await;
    us.stop().await;
}

#[tokio::test]
async fn concurrent_writes_in_two_regions_converge_to_one_profile() {
    let (eu, us) = two_regions(0).await;
    let u = user();
    // Both regions write the same field without having seen each other.
    let (a, b) = tokio::join!(
        write(&eu, "eu", &u, &[("name", "Ada"), ("lang", "en")], None),
        write(&us, "us", &u, &[("name", "Ada L."), ("tz", "UTC")], None),
    );
    assert_eq!(a.fields.get("name").map(String::as_str), Some("Ada"));
    assert_eq!(b.fields.get("name").map(String::as_str), Some("Ada L."));
    let converged = |p: &Profile| p.fields.len() == 3;
    let (at_eu, at_us) = (
        read_until(&eu, "eu", &u, converged).await,
        read_until(&us, "us", &u, converged).await,
    );
    assert_eq!(at_eu.fields, at_us.fields);
    // Equal clock sums: the region name decides, the same everywhere.
    assert_eq!(at_eu.fields.get("name").map(String::as_str), Some("Ada L."));
    assert_eq!(
        at_eu.session.expect("token").clock,
        at_us.session.expect("token").clock
    );
    eu.stop().await;
    us.stop().await;
}

#[tokio::test]
async fn profile_requests_that_break_a_rule_are_refused_naming_the_field() {
    let (eu, us) = two_regions(0).await;
    let mut c = eu.profiles.clone();
    let ok = UpdateProfileRequest {
        region: "eu".into(),
        user_id: user(),
        set: set(&[("name", "Ada")]),
        ..Default::default()
    };
    let cases: Vec<(UpdateProfileRequest, Code, &str)> = vec![
        (
            UpdateProfileRequest {
                region: "mars".into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "region",
        ),
        (
            UpdateProfileRequest {
                region: "us".into(),
                ..ok.clone()
            },
            Code::FailedPrecondition,
            "not served",
        ),
        (
            UpdateProfileRequest {
                user_id: "a b".into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "user_id",
        ),
        (
            UpdateProfileRequest {
                set: set(&[("na me", "x")]),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "set[",
        ),
        (
            UpdateProfileRequest {
                set: HashMap::new(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "set",
        ),
        (
            UpdateProfileRequest {
                wait_ms: 2001,
                ..ok.clone()
            },
            Code::InvalidArgument,
            "wait_ms",
        ),
        (
            UpdateProfileRequest {
                session: Some(SessionToken {
                    clock: [("mars".into(), 1)].into(),
                    region: String::new(),
                }),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "session.clock",
        ),
    ];
    for (r, code, names) in cases {
        let e = c.update_profile(r.clone()).await.expect_err("refused");
        assert_eq!(e.code(), code, "{r:?}: {e:?}");
        assert!(e.message().contains(names), "{r:?}: {}", e.message());
    }
    // Nothing was written.
    let p = read(&eu, "eu", &ok.user_id, None, 0).await.expect("read");
    assert!(p.fields.is_empty());
    // A profile holds at most 64 fields.
    for i in 0..2 {
        let many: HashMap<String, String> =
            (0..32).map(|j| (format!("f{i}.{j}"), "x".into())).collect();
        c.update_profile(UpdateProfileRequest {
            set: many,
            ..ok.clone()
        })
        .await
        .expect("fits");
    }
    let e = c
        .update_profile(UpdateProfileRequest {
            set: set(&[("one.more", "x")]),
            ..ok.clone()
        })
        .await
        .expect_err("full");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    eu.stop().await;
    us.stop().await;
}
