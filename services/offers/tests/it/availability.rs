//! "Available" is said twice: once as the domain's rule
//! (`Offer::is_available`), once as the indexed SQL of the store's
//! `available` query. These tests hold the two to agreement on the same
//! rows, on both backends.

use agora_offers::{
    MIGRATIONS,
    domain::{NewOffer, Offer, OfferKind, Window},
    store,
};

use crate::common::*;

agora_testing::on_both_backends!(the_available_query_and_the_domain_rule_agree);

const HOUR: i64 = 3_600_000_000;

async fn the_available_query_and_the_domain_rule_agree(db: TestDatabase) {
    let database = db.open();
    database.migrate(&MIGRATIONS).await.unwrap();
    let now = 1_000 * HOUR;

    // Every combination that matters: for everyone or personal, before,
    // inside, at the end of and after the window, active or withdrawn, on
    // two products, with end times that interleave.
    let mut offers = Vec::new();
    let mut uow = database.begin().await.unwrap();
    let mut n = 0;
    for customer in [None, Some("cus_a"), Some("cus_b")] {
        for product in ["prd_1", "prd_2"] {
            for (start, end) in [(-2, -1), (-1, 0), (-1, 1), (0, 2), (1, 3), (-3, 5)] {
                for withdraw in [false, true] {
                    n += 1;
                    let new = NewOffer {
                        product_id: product.into(),
                        customer_id: customer.map(str::to_owned),
                        kind: OfferKind::Speed,
                        discount_percent: 10,
                        window: Window { start: now + start * HOUR, end: now + end * HOUR + n },
                    };
                    let mut offer = Offer::create(format!("off_{n:03}"), new, now);
                    if withdraw {
                        offer.withdraw("", now).unwrap();
                    }
                    store::insert(&mut uow, &offer).await.unwrap();
                    offers.push(offer);
                }
            }
        }
    }
    uow.commit().await.unwrap();

    let mut compared = 0;
    for customer in [None, Some("cus_a"), Some("cus_c")] {
        for product in [None, Some("prd_1")] {
            for at in [now - HOUR, now, now + HOUR, now + 4 * HOUR] {
                let from_sql: Vec<String> = store::available(&database, customer, product, at, 1000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.id)
                    .collect();
                // The rule, and the order the query promises: soonest
                // ending first, then in creation order.
                let mut by_rule: Vec<&Offer> = offers
                    .iter()
                    .filter(|o| o.is_available(customer, at) && product.is_none_or(|p| o.product_id == p))
                    .collect();
                by_rule.sort_by_key(|o| o.window.end);
                let by_rule: Vec<String> = by_rule.into_iter().map(|o| o.id.clone()).collect();
                assert_eq!(from_sql, by_rule, "customer {customer:?}, product {product:?}, at {at}");
                compared += by_rule.len();
            }
        }
    }
    assert!(compared > 20, "the cases find offers to compare ({compared})");
    database.close().await;
}
