//! What the catalog relies on from its MongoDB-wire server, checked against the one the stack
//! runs (FerretDB natively, `mongo:7` in compose). nx-27017, the server before FerretDB, failed the
//! first three (docs/STORES.md); these tests are why it is no longer the default.

use mongodb::{
    Client, Collection,
    bson::{Bson, Document, doc},
};

async fn scratch() -> (mongodb::Database, Collection<Document>) {
    let url =
        std::env::var("SHOP__MONGO__URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let client = Client::with_uri_str(&url).await.expect("mongo client");
    let db = client.database(&format!(
        "test_wire_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    let c = db.collection("t");
    (db, c)
}

#[tokio::test]
async fn a_pushed_subdocument_and_a_set_boolean_read_back_as_they_were_written() {
    let (db, c) = scratch().await;
    c.insert_one(doc! { "_id": 1, "outbox": [], "pending": false })
        .await
        .expect("insert");
    c.update_one(
        doc! { "_id": 1 },
        doc! { "$push": { "outbox": { "e": 2_i64 } }, "$set": { "pending": true } },
    )
    .await
    .expect("update");
    let d = c
        .find_one(doc! { "_id": 1 })
        .await
        .expect("find")
        .expect("the document");
    let pushed = d.get_array("outbox").expect("outbox array");
    assert_eq!(pushed, &vec![Bson::Document(doc! { "e": 2_i64 })]);
    assert_eq!(d.get("pending"), Some(&Bson::Boolean(true)));
    db.drop().await.expect("drop");
}

#[tokio::test]
async fn find_and_modify_reports_a_bad_update_instead_of_matching_nothing() {
    let (db, c) = scratch().await;
    c.insert_one(doc! { "_id": 1, "n": 1 })
        .await
        .expect("insert");
    let r = c
        .find_one_and_update(doc! { "_id": 1 }, doc! { "$frobnicate": { "n": 1 } })
        .await;
    assert!(
        r.is_err(),
        "an unknown operator must be an error, got {r:?}"
    );
    db.drop().await.expect("drop");
}

#[tokio::test]
async fn a_duplicate_id_is_error_11000_and_a_versioned_filter_matches_only_its_version() {
    let (db, c) = scratch().await;
    c.insert_one(doc! { "_id": "sku", "version": 1_i64 })
        .await
        .expect("insert");
    let dup = c
        .insert_one(doc! { "_id": "sku", "version": 1_i64 })
        .await
        .expect_err("duplicate");
    assert!(
        matches!(
            dup.kind.as_ref(),
            mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
        ),
        "{dup}"
    );
    let stale = c
        .find_one_and_update(
            doc! { "_id": "sku", "version": 0_i64 },
            doc! { "$set": { "version": 1_i64 } },
        )
        .await
        .expect("stale update");
    assert!(stale.is_none(), "a stale version matches nothing");
    db.drop().await.expect("drop");
}

/// The outbox's bound (`store::outbox_has_room`): `{"a.<i>": {"$exists": false}}` matches an
/// array with no element at position `i` (shorter than `i + 1`), and a missing array.
#[tokio::test]
async fn an_array_position_that_does_not_exist_matches_only_shorter_arrays() {
    let (db, c) = scratch().await;
    c.insert_many([
        doc! { "_id": 2, "a": ["x", "y"] },
        doc! { "_id": 3, "a": ["x", "y", "z"] },
        doc! { "_id": 0, "a": [] },
        doc! { "_id": -1 },
    ])
    .await
    .expect("insert");
    let mut room: Vec<i32> = futures::TryStreamExt::try_collect::<Vec<Document>>(
        c.find(doc! { "a.2": { "$exists": false } })
            .await
            .expect("find"),
    )
    .await
    .expect("documents")
    .iter()
    .map(|d| d.get_i32("_id").expect("id"))
    .collect();
    room.sort();
    assert_eq!(room, [-1, 0, 2]);
    // In an update's filter, with a push: the third element goes in, a fourth does not.
    let push = |id: i32| {
        c.find_one_and_update(
            doc! { "_id": id, "a.2": { "$exists": false } },
            doc! { "$push": { "a": "new" } },
        )
    };
    assert!(push(2).await.expect("push").is_some());
    assert!(push(2).await.expect("push").is_none(), "full at three");
    assert!(push(3).await.expect("push").is_none(), "full at three");
    db.drop().await.expect("drop");
}
