//! A new offer against a deletion or a discontinuation upstream, with the
//! race forced every time: the upstream's answer about the customer (or
//! the product) is held back at the proxy while the upstream deletes the
//! customer (discontinues the product) and offers applies that from the
//! feed; then the answer, older than the deletion, reaches offers. The
//! deletion wins: the offer is refused and nothing of it is left active.

use std::time::Duration;

use crate::common::*;
use agora_platform::Database;
use agora_testing::wait_until;
use tonic::Code;
use tonic_types::StatusExt as _;

agora_testing::on_both_backends!(
    a_personal_offer_is_refused_when_its_customer_is_deleted_while_customers_answers,
    an_offer_is_refused_when_its_product_is_discontinued_while_the_catalog_answers,
);

/// Offers with the upstreams' feeds refused (it hears of nothing from
/// them), and time enough for an answer held back at a proxy.
async fn start_patient(db: TestDatabase) -> System {
    start_with_unfed(db, |settings, offers| {
        settings.request_timeout = Duration::from_secs(60);
        offers.upstreams.catalog.call_timeout = Duration::from_secs(60);
        offers.upstreams.customers.call_timeout = Duration::from_secs(60);
    })
    .await
}

/// Whether offers keeps `sql` (one row, one boolean column) true, within
/// the bound: the feed's change reached offers' database.
async fn kept(db: &Database, sql: &'static str, id: &str) -> bool {
    wait_until(BOUND * 2, || async {
        match db.query(sql).bind(id).fetch_optional().await {
            Ok(Some(row)) => row.get::<bool>("kept").unwrap_or(false),
            _ => false,
        }
    })
    .await
}

async fn a_personal_offer_is_refused_when_its_customer_is_deleted_while_customers_answers(db: TestDatabase) {
    let mut s = start_patient(db).await;
    let product = s.product().await;
    let ada = s.customer("ada@example.com").await;
    let offers_db = s.offers_db.open();

    let mut client = s.offers.clone();
    let call = {
        let (product, ada) = (product.clone(), ada.clone());
        async move { client.create_offer(create(offer(&product, &ada, 10))).await }
    };
    let (mut customers, proxy) = (s.customers.clone(), &s.customers_proxy);
    let answer = proxy
        .between_answer_and_use("GetCustomer", call, async {
            customers
                .delete_customer(customers_pb::DeleteCustomerRequest {
                    customer_id: ada.clone(),
                    etag: String::new(),
                })
                .await
                .expect("customer deleted");
            proxy.stop_refusing();
            let sql = "SELECT deleted AS kept FROM known_customers WHERE customer_id = $1";
            assert!(kept(&offers_db, sql, &ada).await, "the deletion never reached offers");
        })
        .await;

    let err = answer.expect_err("an offer for a customer deleted before it was made");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.get_details_resource_info().unwrap().resource_type, "customer");
    let active = s.offers_of(&product, pb::OfferState::Active).await;
    assert!(active.iter().all(|o| o.customer_id != ada), "an active offer of a deleted customer: {active:?}");
}

async fn an_offer_is_refused_when_its_product_is_discontinued_while_the_catalog_answers(db: TestDatabase) {
    let mut s = start_patient(db).await;
    let product = s.product().await;
    let offers_db = s.offers_db.open();

    let mut client = s.offers.clone();
    let call = {
        let product = product.clone();
        async move { client.create_offer(create(offer(&product, "", 10))).await }
    };
    let (mut catalog, proxy) = (s.catalog.clone(), &s.catalog_proxy);
    let answer = proxy
        .between_answer_and_use("GetProduct", call, async {
            catalog
                .discontinue_product(catalog_pb::DiscontinueProductRequest {
                    product_id: product.clone(),
                    etag: String::new(),
                })
                .await
                .expect("product discontinued");
            proxy.stop_refusing();
            let sql = "SELECT NOT on_sale AS kept FROM catalog_products WHERE product_id = $1";
            assert!(kept(&offers_db, sql, &product).await, "the discontinuation never reached offers");
        })
        .await;

    let err = answer.expect_err("an offer on a product discontinued before it was made");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.get_details_precondition_failure().unwrap().violations[0].r#type, "PRODUCT_STATE");
    assert!(s.offers_of(&product, pb::OfferState::Active).await.is_empty());
}
