//! Who may call offers: the authorization matrix of its policy. Offers
//! calls catalog and customers itself, over mTLS with its own identity,
//! on every CreateOffer of the matrix.

use agora_platform::security::CertificateFiles;
use agora_testing::{TestServer, Who, matrix, pki};

use crate::common::*;
use pb::offer_service_client::OfferServiceClient;

#[tokio::test]
async fn every_rpc_answers_every_caller_as_the_policy_says() {
    let mut s = start(TestDatabase::sqlite()).await;
    let product = s.product().await;
    let owner = s.customer("matrix@example.com").await;
    let staff = s.offers.clone();
    matrix::check("offers", &agora_offers::api::POLICY, async |method, role| {
        let mut staff = staff.clone();
        let mut client = OfferServiceClient::new(matrix::channel(s.offers_server.grpc_addr, role, &owner));
        // An offer meant for the owner alone.
        let mut personal = async || {
            let created = staff.create_offer(create(offer(&product, &owner, 10))).await.unwrap();
            created.into_inner().offer.unwrap().offer_id
        };
        match method {
            "CreateOffer" => client.create_offer(create(offer(&product, &owner, 10))).await.map(drop),
            "GetOffer" => {
                let offer_id = personal().await;
                client.get_offer(pb::GetOfferRequest { offer_id }).await.map(drop)
            }
            "ListOffers" => client.list_offers(pb::ListOffersRequest::default()).await.map(drop),
            "WithdrawOffer" => {
                let offer_id = personal().await;
                client
                    .withdraw_offer(pb::WithdrawOfferRequest { offer_id, etag: String::new() })
                    .await
                    .map(drop)
            }
            "ListAvailableOffers" => {
                let request =
                    pb::ListAvailableOffersRequest { customer_id: owner.clone(), product_id: String::new() };
                client.list_available_offers(request).await.map(drop)
            }
            other => panic!("the matrix has no call of {other}"),
        }
    })
    .await;
}

/// A customer sees the offers meant for everyone and their own, and no
/// other customer's, whether it exists or not.
#[tokio::test]
async fn a_customer_reads_public_offers_and_their_own_only() {
    let mut s = start(TestDatabase::sqlite()).await;
    let product = s.product().await;
    let ana = s.customer("ana@example.com").await;
    let bruno = s.customer("bruno@example.com").await;
    let mut made = Vec::new();
    for customer in ["", ana.as_str(), bruno.as_str()] {
        let created = s.offers.create_offer(create(offer(&product, customer, 10))).await.unwrap();
        made.push(created.into_inner().offer.unwrap().offer_id);
    }
    let mut as_ana = OfferServiceClient::new(s.offers_server.channel_as(&Who::customer(&ana)));
    for (offer_id, readable) in [(&made[0], true), (&made[1], true), (&made[2], false)] {
        let answer = as_ana.get_offer(pb::GetOfferRequest { offer_id: offer_id.clone() }).await;
        assert_eq!(answer.is_ok(), readable, "{offer_id}: {answer:?}");
    }
    let missing = as_ana.get_offer(pb::GetOfferRequest { offer_id: "off_none".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::PermissionDenied);
    let mine = as_ana
        .list_available_offers(pb::ListAvailableOffersRequest {
            customer_id: ana.clone(),
            product_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = mine.offers.iter().map(|o| o.offer_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&made[2].as_str()), "bruno's offer: {ids:?}");
    let anonymous = as_ana.list_available_offers(pb::ListAvailableOffersRequest::default()).await.unwrap();
    assert_eq!(anonymous.into_inner().offers.len(), 1, "as an anonymous shopper: everyone's offers only");
}

/// An upstream whose certificate expired: offers' calls to it fail with
/// UNAVAILABLE, and the message names the upstream and the cause.
#[tokio::test]
async fn an_upstream_with_an_expired_certificate_is_named_with_the_cause() {
    let dir = pki().dir().join("expired-catalog");
    std::fs::create_dir_all(&dir).unwrap();
    let expired =
        pki().issue(&agora_dev::pki::Leaf::service("catalog", agora_dev::layout::TRUST_DOMAIN).expired());
    let (cert, key) = (dir.join("catalog.pem"), dir.join("catalog.key"));
    std::fs::write(&cert, &expired.cert_pem).unwrap();
    std::fs::write(&key, &expired.key_pem).unwrap();
    let catalog_db = TestDatabase::sqlite();
    let mut settings = agora_testing::settings("catalog", &catalog_db);
    settings.security.certificate = Some(CertificateFiles { cert, key });
    let catalog = TestServer::start(agora_catalog::build(settings).await.unwrap()).await;

    let addr = agora_testing::url(catalog.grpc_addr);
    let mut s =
        start_with(TestDatabase::sqlite(), |_, offers| offers.upstreams.catalog.addrs = vec![addr]).await;
    let err = s.offers.create_offer(create(offer("prd_any", "", 10))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let message = err.message().to_lowercase();
    assert!(message.contains("catalog") && message.contains("expired"), "{err:?}");
}
