//! A new offer against a deletion or a discontinuation upstream, with the
//! race forced every time: the upstream's answer about the customer (or
//! the product) is held back at the proxy while the upstream deletes the
//! customer (discontinues the product) and offers applies that from the
//! feed; then the answer, older than the deletion, reaches offers. The
//! deletion wins: the offer is refused and nothing of it is left active.

use std::time::Duration;

use crate::common::*;
use agora_testing::{KEPT_DELETED, KEPT_DISCONTINUED};
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
    let mut customers = s.customers.clone();
    let delete = async {
        let request = customers_pb::DeleteCustomerRequest { customer_id: ada.clone(), etag: String::new() };
        customers.delete_customer(request).await.expect("customer deleted");
    };
    let answer = s.customers_proxy.race("GetCustomer", call, delete, &offers_db, KEPT_DELETED, &ada).await;

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
    let mut catalog = s.catalog.clone();
    let discontinue = async {
        let request =
            catalog_pb::DiscontinueProductRequest { product_id: product.clone(), etag: String::new() };
        catalog.discontinue_product(request).await.expect("product discontinued");
    };
    let answer =
        s.catalog_proxy.race("GetProduct", call, discontinue, &offers_db, KEPT_DISCONTINUED, &product).await;

    let err = answer.expect_err("an offer on a product discontinued before it was made");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.get_details_precondition_failure().unwrap().violations[0].r#type, "PRODUCT_STATE");
    assert!(s.offers_of(&product, pb::OfferState::Active).await.is_empty());
}
