//! The two claims of causal consistency, over random workloads of three regions and random
//! deliveries (out of order, duplicated, delayed): no replica ever shows an effect before its
//! cause, and every replica that has received every update shows the same thing.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const REGIONS: [&str; 3] = ["ap", "eu", "us"];
const MAX_PENDING: usize = 10_000;

fn changes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
        .collect()
}

#[test]
fn an_update_waits_for_its_cause_and_is_released_by_it() {
    let mut eu = Replica::new();
    let address = eu.write("eu", changes(&[("address.home", Some("1 Quay St"))]));
    let default = eu.write("eu", changes(&[("default_address", Some("home"))]));
    let mut us = Replica::new();
    // The effect arrives first: it waits, and nothing of it shows.
    assert_eq!(us.receive(default.clone(), 8), Ok(Received::Waiting));
    assert_eq!(us.value("default_address"), None);
    assert_eq!(us.receive(default.clone(), 8), Ok(Received::Duplicate));
    // Its cause releases it.
    assert_eq!(
        us.receive(address.clone(), 8),
        Ok(Received::Applied { released: 1 })
    );
    assert_eq!(us.value("default_address"), Some("home"));
    assert!(us.pending.is_empty());
    assert_eq!(us.receive(address, 8), Ok(Received::Duplicate));
    assert_eq!(us, eu);
}

#[test]
fn a_reply_from_another_region_waits_for_the_message_it_answers() {
    let (mut eu, mut us, mut ap) = (Replica::new(), Replica::new(), Replica::new());
    let question = eu.write("eu", changes(&[("note.1", Some("is it gift-wrapped?"))]));
    us.receive(question.clone(), 8).unwrap();
    let reply = us.write("us", changes(&[("note.2", Some("re note.1: yes"))]));
    // ap hears the reply first.
    assert_eq!(ap.receive(reply, 8), Ok(Received::Waiting));
    assert_eq!(ap.value("note.2"), None);
    assert_eq!(
        ap.receive(question, 8),
        Ok(Received::Applied { released: 1 })
    );
    assert_eq!(ap.value("note.2"), Some("re note.1: yes"));
}

#[test]
fn concurrent_writes_of_one_field_resolve_the_same_everywhere() {
    let (mut eu, mut us) = (Replica::new(), Replica::new());
    let a = eu.write("eu", changes(&[("name", Some("Ada"))]));
    let b = us.write("us", changes(&[("name", Some("Ada L."))]));
    eu.receive(b, 8).unwrap();
    us.receive(a, 8).unwrap();
    // Equal sums (1): the region name breaks the tie, "us" > "eu".
    assert_eq!(eu.value("name"), Some("Ada L."));
    assert_eq!(eu, us);
    // A write that saw both wins over both, wherever it lands.
    let c = eu.write("eu", changes(&[("name", None)]));
    us.receive(c, 8).unwrap();
    assert_eq!((eu.value("name"), us.value("name")), (None, None));
    assert_eq!(eu, us);
}

#[test]
fn the_waiting_room_is_bounded() {
    let mut eu = Replica::new();
    let updates: Vec<_> = (0..4)
        .map(|i| eu.write("eu", changes(&[("n", Some(&i.to_string()))])))
        .collect();
    let mut us = Replica::new();
    assert_eq!(us.receive(updates[3].clone(), 2), Ok(Received::Waiting));
    assert_eq!(us.receive(updates[2].clone(), 2), Ok(Received::Waiting));
    assert_eq!(us.receive(updates[1].clone(), 2), Err(PendingFull(2)));
    // The first applies but releases nothing (the second is missing); the second releases both.
    assert_eq!(
        us.receive(updates[0].clone(), 2),
        Ok(Received::Applied { released: 0 })
    );
    assert_eq!(
        us.receive(updates[1].clone(), 2),
        Ok(Received::Applied { released: 2 })
    );
    assert_eq!(us.value("n"), Some("3"));
}

/// What one step of a workload does.
#[derive(Debug, Clone)]
enum Step {
    /// A region adds (or changes) an address under one of three labels.
    Address { region: usize, label: u8, text: u8 },
    /// A region makes one of the addresses it sees the default (an effect of that address).
    Default {
        region: usize,
        pick: prop::sample::Index,
    },
    /// A region sets or removes the display name (concurrent writes of one field).
    Name { region: usize, name: Option<u8> },
    /// A region receives one of the updates published so far (any, again or late).
    Deliver {
        region: usize,
        pick: prop::sample::Index,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let region = 0..REGIONS.len();
    prop_oneof![
        1 => (region.clone(), 0u8..3, any::<u8>())
            .prop_map(|(region, label, text)| Step::Address { region, label, text }),
        1 => (region.clone(), any::<prop::sample::Index>())
            .prop_map(|(region, pick)| Step::Default { region, pick }),
        1 => (region.clone(), prop::option::of(any::<u8>()))
            .prop_map(|(region, name)| Step::Name { region, name }),
        3 => (region, any::<prop::sample::Index>())
            .prop_map(|(region, pick)| Step::Deliver { region, pick }),
    ]
}

/// The regions' replicas after running `steps`, and every update they published.
fn run(steps: &[Step]) -> Result<(Vec<Replica>, Vec<Update>), TestCaseError> {
    let mut replicas = vec![Replica::new(); REGIONS.len()];
    let mut published: Vec<Update> = Vec::new();
    for s in steps {
        match s {
            Step::Address {
                region,
                label,
                text,
            } => {
                let k = format!("address.{label}");
                let v = format!("{text} Main St");
                published
                    .push(replicas[*region].write(REGIONS[*region], changes(&[(&k, Some(&v))])));
            }
            Step::Default { region, pick } => {
                let seen: Vec<String> = replicas[*region]
                    .values()
                    .filter_map(|(k, _)| k.strip_prefix("address.").map(str::to_owned))
                    .collect();
                if seen.is_empty() {
                    continue;
                }
                let label = &seen[pick.index(seen.len())];
                published.push(
                    replicas[*region].write(REGIONS[*region], changes(&[("default", Some(label))])),
                );
            }
            Step::Name { region, name } => {
                let v = name.map(|n| format!("name {n}"));
                published.push(
                    replicas[*region].write(REGIONS[*region], changes(&[("name", v.as_deref())])),
                );
            }
            Step::Deliver { region, pick } => {
                if published.is_empty() {
                    continue;
                }
                let u = published[pick.index(published.len())].clone();
                replicas[*region].receive(u, MAX_PENDING).expect("room");
                causally_closed(&replicas[*region], &published)?;
            }
        }
    }
    Ok((replicas, published))
}

/// No effect before its cause: every update this replica has applied has all the updates that
/// happened before it applied too, and the default address it shows is one it shows.
fn causally_closed(r: &Replica, all: &[Update]) -> Result<(), TestCaseError> {
    for u in all.iter().filter(|u| r.has_applied(u)) {
        for v in all.iter().filter(|v| v.clock < u.clock) {
            prop_assert!(
                r.has_applied(v),
                "applied {:?} before its cause {:?}",
                u.clock,
                v.clock
            );
        }
    }
    if let Some(label) = r.value("default") {
        prop_assert!(
            r.value(&format!("address.{label}")).is_some(),
            "default address {label} shown before the address itself"
        );
    }
    Ok(())
}

/// The rule, said directly: each field shows the write with the highest stamp.
fn by_the_rule(all: &[Update]) -> BTreeMap<String, Option<String>> {
    let mut best: BTreeMap<String, (Stamp, Option<String>)> = BTreeMap::new();
    for u in all {
        for (k, v) in &u.changes {
            if best.get(k).is_none_or(|(s, _)| u.stamp() > *s) {
                best.insert(k.clone(), (u.stamp(), v.clone()));
            }
        }
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

fn shown(r: &Replica) -> BTreeMap<String, Option<String>> {
    r.fields
        .iter()
        .map(|(k, f)| (k.clone(), f.value.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_replica_shows_an_effect_before_its_cause_and_all_converge(
        steps in prop::collection::vec(step(), 1..60),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
    ) {
        let (mut replicas, all) = run(&steps)?;
        // Two observers that never write: one gets random picks (duplicates, any order), then
        // everything newest first; the other everything oldest first, twice.
        let (mut random, mut in_order) = (Replica::new(), Replica::new());
        if !all.is_empty() {
            for p in &picks {
                random.receive(all[p.index(all.len())].clone(), MAX_PENDING).expect("room");
                causally_closed(&random, &all)?;
            }
        }
        for u in all.iter().rev() {
            random.receive(u.clone(), MAX_PENDING).expect("room");
            causally_closed(&random, &all)?;
        }
        for u in all.iter().chain(all.iter()) {
            in_order.receive(u.clone(), MAX_PENDING).expect("room");
        }
        // The regions hear whatever they missed, late and newest first.
        for r in &mut replicas {
            for u in all.iter().rev() {
                r.receive(u.clone(), MAX_PENDING).expect("room");
                causally_closed(r, &all)?;
            }
        }
        let want = by_the_rule(&all);
        for r in replicas.iter().chain([&random, &in_order]) {
            prop_assert!(r.pending.is_empty());
            prop_assert_eq!(&r.clock, &in_order.clock);
            prop_assert_eq!(&shown(r), &want);
        }
    }
}
