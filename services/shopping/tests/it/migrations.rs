//! A database created by an earlier version of shopping, whose own
//! migrations made the platform's feed cursors too, keeps migrating
//! forward: the new binary adopts its history, serves and changes its rows,
//! keeps its feed cursors and ends with the schema of a fresh database.

use agora_shopping::MIGRATIONS;

use crate::common::*;

agora_testing::on_both_backends!(a_database_of_the_earlier_history_is_adopted_with_its_rows);

const T0: i64 = 1_700_000_000_000_000;

async fn a_database_of_the_earlier_history_is_adopted_with_its_rows(db: TestDatabase) {
    let old = db.migrated_as_before(&MIGRATIONS).await;
    old.query(
        "INSERT INTO shopping_lists (list_id, customer_id, title, revision, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind("lst_old")
    .bind("cus_old")
    .bind("Groceries")
    .bind(3_i64)
    .bind(T0)
    .execute()
    .await
    .unwrap();
    for (product, quantity, available, position) in [("prd_b", 2_i64, 1_i64, 1_i64), ("prd_a", 1, 0, 2)] {
        old.query(
            "INSERT INTO list_items (list_id, product_id, quantity, available, position) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind("lst_old")
        .bind(product)
        .bind(quantity)
        .bind(available)
        .bind(position)
        .execute()
        .await
        .unwrap();
    }
    old.close().await;

    let mut s = start(db).await;
    s.owners.insert("lst_old".into(), "cus_old".into());
    let kept = s.get("lst_old").await.expect("the old list is served");
    assert_eq!(availability(&kept), [("prd_b".to_owned(), true), ("prd_a".to_owned(), false)]);
    assert_eq!(kept.etag, "r3");
    let removed = s.remove("lst_old", "prd_b", "r3").await.expect("the old list changes");
    assert_eq!(availability(&removed), [("prd_a".to_owned(), false)]);
    assert_eq!(removed.etag, "r4");

    s.shopping_db.assert_schema_as_fresh(&MIGRATIONS).await;
}
