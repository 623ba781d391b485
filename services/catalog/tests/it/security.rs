//! Who may call the catalog, and over what: the authorization matrix of
//! its policy, TLS (plaintext refused, strangers' certificates refused,
//! rotation without a restart), the plaintext admin port, the audit log,
//! rejections counted and tokens kept out of logs and metrics, and the
//! insecure opt-out.

use std::{path::PathBuf, time::Duration};

use agora_dev::{
    pki::{Authority, Leaf},
    tokens::{Claims, Signer},
};
use agora_platform::security::{CertificateFiles, SecuritySettings, tls::ClientTls};
use agora_testing::{Captured, Who, http_get, matrix, pki, tls_channel, wait_until};
use prost_types::FieldMask;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::*;
use pb::catalog_service_client::CatalogServiceClient;

#[tokio::test]
async fn every_rpc_answers_every_caller_as_the_policy_says() {
    let c = start(TestDatabase::sqlite()).await;
    let staff = c.client.clone();
    let mut n = 0;
    matrix::check("catalog", &agora_catalog::api::POLICY, async |method, role| {
        n += 1;
        let mut staff = staff.clone();
        let mut client =
            CatalogServiceClient::new(matrix::channel(c.server.grpc_addr, role, &format!("cus_{n}")));
        match method {
            "CreateFamily" => client
                .create_family(pb::CreateFamilyRequest {
                    family: Some(pb::Family { display_name: "Lamps".into(), ..Default::default() }),
                })
                .await
                .map(drop),
            "GetFamily" => {
                let family_id = family(&mut staff, "Lamps").await.family_id;
                client.get_family(pb::GetFamilyRequest { family_id }).await.map(drop)
            }
            "ListFamilies" => client.list_families(pb::ListFamiliesRequest::default()).await.map(drop),
            "CreateProduct" => {
                let family = family(&mut staff, "Lamps").await;
                let product = Some(new_product(&family.family_id, "Lamp", 100));
                client
                    .create_product(pb::CreateProductRequest { request_id: String::new(), product })
                    .await
                    .map(drop)
            }
            "GetProduct" => {
                let product_id = some_product(&mut staff).await;
                client.get_product(pb::GetProductRequest { product_id }).await.map(drop)
            }
            "BatchGetProducts" => {
                let product_ids = vec![some_product(&mut staff).await];
                client.batch_get_products(pb::BatchGetProductsRequest { product_ids }).await.map(drop)
            }
            "ListProducts" => client.list_products(pb::ListProductsRequest::default()).await.map(drop),
            "UpdateProduct" => {
                let product_id = some_product(&mut staff).await;
                let product = pb::Product { product_id, display_name: "Lamp 2".into(), ..Default::default() };
                let update_mask = Some(FieldMask { paths: vec!["display_name".into()] });
                client
                    .update_product(pb::UpdateProductRequest { product: Some(product), update_mask })
                    .await
                    .map(drop)
            }
            "DiscontinueProduct" => {
                let product_id = some_product(&mut staff).await;
                let request = pb::DiscontinueProductRequest { product_id, etag: String::new() };
                client.discontinue_product(request).await.map(drop)
            }
            "StreamProducts" => client.stream_products(pb::StreamProductsRequest::default()).await.map(drop),
            "WatchCatalogEvents" => client
                .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: 0 })
                .await
                .map(drop),
            other => panic!("the matrix has no call of {other}"),
        }
    })
    .await;
}

async fn some_product(staff: &mut CatalogServiceClient<agora_testing::Channel>) -> String {
    let family = family(staff, "Lamps").await;
    product(staff, &family.family_id, "Lamp", 100).await.product_id
}

/// The admin port answers health in plaintext, without a token, and
/// nothing else of gRPC: no catalog call, no reflection beyond health.
#[tokio::test]
async fn the_admin_port_serves_health_alone_in_plaintext() {
    let c = start(TestDatabase::sqlite()).await;
    let admin = c.server.admin_channel();
    assert_eq!(agora_testing::health_status(&admin, "").await, Some(ServingStatus::Serving));
    assert_eq!(agora_testing::health_status(&admin, CATALOG).await, Some(ServingStatus::Serving));
    let err = CatalogServiceClient::new(admin.clone())
        .list_families(pb::ListFamiliesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let (services, _) = agora_testing::reflect(&admin, "grpc.health.v1.Health.Check").await;
    assert_eq!(services, ["grpc.health.v1.Health"]);
}

const CATALOG: &str = "agora.catalog.v1.CatalogService";

/// Health needs no token on the TLS port either; reflection does.
#[tokio::test]
async fn health_needs_no_token_and_reflection_does() {
    let c = start(TestDatabase::sqlite()).await;
    let anonymous = c.server.channel_as(&Who::Nobody);
    let answer = HealthClient::new(anonymous.clone()).check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
    let err = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(anonymous)
        .server_reflection_info(tokio_stream::iter([]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let customer = c.server.channel_as(&Who::customer("cus_1"));
    let (services, _) = agora_testing::reflect(&customer, "agora.catalog.v1.CatalogService.GetProduct").await;
    assert!(services.contains(&CATALOG.to_owned()));
}

/// Staff writes leave one audit line each: who, which RPC, which
/// resource, the outcome. Refused calls leave none but are counted by
/// reason; no token reaches a log or the metrics.
#[tokio::test]
async fn staff_writes_are_audited_and_rejections_counted_without_tokens() {
    let logs = Captured::install(tracing::Level::DEBUG);
    let mut c = start(TestDatabase::sqlite()).await;
    let fam = family(&mut c.client, "Lamps").await;
    let p = product(&mut c.client, &fam.family_id, "Lamp", 100).await;
    c.client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: p.product_id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let err = c
        .client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: "prd_none".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Refused: a customer's write, a forged token, no token.
    let mut customer = CatalogServiceClient::new(c.server.channel_as(&Who::customer("cus_1")));
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.";
    let mut forger =
        CatalogServiceClient::new(tls_channel(c.server.grpc_addr, &pki().client_tls(), &Who::Nobody));
    let denied = customer
        .create_family(pb::CreateFamilyRequest { family: Some(pb::Family::default()) })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut request = tonic::Request::new(pb::ListFamiliesRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_eq!(forger.list_families(request).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        forger.list_families(pb::ListFamiliesRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let text = logs.text();
    let audit: Vec<&str> = text.lines().filter(|l| l.contains("agora::audit")).collect();
    let expect = [
        ("CreateFamily", fam.family_id.as_str(), "OK"),
        ("CreateProduct", p.product_id.as_str(), "OK"),
        ("DiscontinueProduct", p.product_id.as_str(), "OK"),
        ("DiscontinueProduct", "prd_none", "NOT_FOUND"),
    ];
    assert_eq!(audit.len(), expect.len(), "{audit:#?}");
    for (line, (rpc, resource, outcome)) in audit.iter().zip(expect) {
        for part in [
            "who=\"staff:staff-1\"".to_owned(),
            format!("rpc=\"{rpc}\""),
            format!("resource=\"{resource}\""),
            format!("outcome=\"{outcome}\""),
        ] {
            assert!(line.contains(&part), "{part} missing from {line}");
        }
    }
    let metrics = http_get(c.server.admin_addr, "/metrics").await;
    for reason in ["forbidden", "malformed", "missing"] {
        assert!(
            metrics.contains(&format!("agora_auth_rejections_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
    let staff_token = pki().token(&Who::Staff).unwrap();
    for secret in [forged, staff_token.as_str()] {
        assert!(!text.contains(secret), "a token reached the logs");
        assert!(!metrics.contains(secret), "a token reached the metrics");
    }
}

/// A copy of the test credentials a test may change under a running server.
struct OwnFiles {
    dir: PathBuf,
}

impl OwnFiles {
    fn new() -> Self {
        let dir = pki().dir().join(format!("own-{}", fastrand_name()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["catalog.pem", "catalog.key", "jwks.json"] {
            std::fs::copy(pki().dir().join(name), dir.join(name)).unwrap();
        }
        Self { dir }
    }

    fn security(&self) -> SecuritySettings {
        let mut security = pki().security("catalog");
        security.certificate =
            Some(CertificateFiles { cert: self.dir.join("catalog.pem"), key: self.dir.join("catalog.key") });
        security.tokens.as_mut().unwrap().jwks = self.dir.join("jwks.json");
        security
    }

    /// Replaces a file as a Secret update does: a new file renamed over it.
    fn replace(&self, name: &str, contents: &str) {
        let partial = self.dir.join(format!("{name}.partial"));
        std::fs::write(&partial, contents).unwrap();
        std::fs::rename(partial, self.dir.join(name)).unwrap();
    }
}

fn fastrand_name() -> String {
    format!("{:?}", std::time::Instant::now()).chars().filter(char::is_ascii_digit).collect()
}

impl Drop for OwnFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn can_list(channel: agora_testing::Channel) -> Result<(), tonic::Status> {
    CatalogServiceClient::new(channel).list_families(pb::ListFamiliesRequest::default()).await.map(drop)
}

/// A certificate and a JWKS replaced on disk are used without a restart:
/// new connections get the new certificate, tokens of the new key pass and
/// those of the old one no longer do.
#[tokio::test]
async fn certificates_and_token_keys_rotate_without_a_restart() {
    let files = OwnFiles::new();
    let c = start_with(TestDatabase::sqlite(), |s| s.security = files.security()).await;
    let next_ca = Authority::generate_named("Next CA").unwrap();
    let trusts_next = ClientTls::fixed(
        agora_platform::security::tls::client_config(next_ca.cert_pem().as_bytes(), None).unwrap(),
    );
    assert!(can_list(c.server.channel.clone()).await.is_ok());
    assert!(can_list(tls_channel(c.server.grpc_addr, &trusts_next, &Who::Staff)).await.is_err());

    let renewed = next_ca.issue(&Leaf::service("catalog", agora_dev::layout::TRUST_DOMAIN)).unwrap();
    files.replace("catalog.key", &renewed.key_pem);
    files.replace("catalog.pem", &renewed.cert_pem);
    let served = wait_until(Duration::from_secs(10), || {
        can_list(tls_channel(c.server.grpc_addr, &trusts_next, &Who::Staff))
            .then(|r| async move { r.is_ok() })
    })
    .await;
    assert!(served, "the renewed certificate is not served");
    let old = can_list(agora_testing::channel_as(c.server.grpc_addr, &Who::Staff)).await.unwrap_err();
    assert_eq!(old.code(), Code::Unavailable, "a new connection still got the old certificate: {old:?}");

    let next_key = Signer::generate("next").unwrap();
    files.replace("jwks.json", &next_key.jwks().unwrap());
    let token = next_key.sign(&Claims::new("staff-2", &["staff"], 600)).unwrap();
    let with_next_key = || {
        let channel = trusts_next.channel(&agora_testing::url(c.server.grpc_addr), |e| e).unwrap();
        let bearer = agora_testing::Bearer::new(Some(token.clone()));
        can_list(tonic::service::interceptor::InterceptedService::new(channel, bearer))
    };
    assert!(wait_until(Duration::from_secs(10), || with_next_key().then(|r| async move { r.is_ok() })).await);
    let old_key = can_list(tls_channel(c.server.grpc_addr, &trusts_next, &Who::Staff)).await.unwrap_err();
    assert_eq!(old_key.code(), Code::Unauthenticated);
}

use futures_util::FutureExt as _;

/// TLS refuses what it should: a plaintext client, and a client
/// certificate from another CA (even one that names a service).
#[tokio::test]
async fn plaintext_and_strangers_are_refused() {
    let c = start(TestDatabase::sqlite()).await;
    let plaintext = agora_testing::plain_channel(c.server.grpc_addr);
    let err = HealthClient::new(plaintext).check(HealthCheckRequest::default()).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    let stranger_ca = Authority::generate_named("Stranger CA").unwrap();
    let stranger = stranger_ca.issue(&Leaf::service("offers", agora_dev::layout::TRUST_DOMAIN)).unwrap();
    let tls = ClientTls::fixed(
        agora_platform::security::tls::client_config(
            pki().ca_pem().as_bytes(),
            Some((stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes())),
        )
        .unwrap(),
    );
    let err = CatalogServiceClient::new(tls_channel(c.server.grpc_addr, &tls, &Who::Nobody))
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: 0 })
        .await
        .unwrap_err();
    // TLS 1.3: the client learns of the refusal from the server's alert.
    assert!(agora_platform::error::chain(&err).contains("UnknownCA"), "{err:?}");
    let metrics = http_get(c.server.admin_addr, "/metrics").await;
    assert!(metrics.contains("agora_tls_handshake_failures_total"), "{metrics}");
}

/// An expired server certificate: the client's error says so.
#[tokio::test]
async fn an_expired_server_certificate_is_a_clear_client_error() {
    let files = OwnFiles::new();
    let expired = pki().issue(&Leaf::service("catalog", agora_dev::layout::TRUST_DOMAIN).expired());
    files.replace("catalog.pem", &expired.cert_pem);
    files.replace("catalog.key", &expired.key_pem);
    let c = start_with(TestDatabase::sqlite(), |s| s.security = files.security()).await;
    let err = can_list(c.server.channel.clone()).await.unwrap_err();
    let chain = agora_platform::error::chain(&err);
    assert!(chain.to_lowercase().contains("expired"), "{chain}");
}

/// Without TLS or token keys, only with AGORA_INSECURE=1: then every start
/// warns, and the metric says what is switched off.
#[tokio::test]
async fn the_insecure_opt_out_warns_and_shows_in_the_metrics() {
    let logs = Captured::install(tracing::Level::WARN);
    let c = start_with(TestDatabase::sqlite(), |s| s.security = SecuritySettings::insecure()).await;
    let mut client = c.client.clone();
    client.list_families(pb::ListFamiliesRequest::default()).await.expect("anyone may call");
    let text = logs.text();
    assert!(text.contains("AGORA_INSECURE=1: running without tls"), "{text}");
    assert!(text.contains("running without authentication"), "{text}");
    let metrics = http_get(c.server.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"agora_insecure{switched_off="tls"} 1"#), "{metrics}");
}

/// The CA of the local PostgreSQL's certificate (`make postgres-tls`), or
/// None with the reason printed (a failure where PostgreSQL is required).
fn postgres_tls_ca() -> Option<PathBuf> {
    let path = std::env::var("AGORA_TEST_POSTGRES_TLS_CA")
        .map_or_else(|_| PathBuf::from("/etc/postgresql/agora-tls/ca.pem"), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "PostgreSQL has no certificate of a test CA ({} is missing: run make postgres-tls)",
        path.display()
    );
    assert!(std::env::var("AGORA_REQUIRE_POSTGRES").as_deref() != Ok("1"), "{reason}");
    agora_testing::skipped(&reason);
    None
}

/// When the URL asks for it (sslmode=verify-full and the CA), the catalog
/// talks to PostgreSQL over TLS only, having verified the server's
/// certificate and name; a certificate of another CA is refused.
#[tokio::test]
async fn postgres_is_reached_over_verified_tls_when_the_url_asks() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let Some(ca) = postgres_tls_ca() else { return };
    let base = db.url().expose().split('?').next().unwrap().to_owned();
    let verified = |ca: &std::path::Path, name: &str| {
        format!("{base}?sslmode=verify-full&sslrootcert={}&application_name={name}", ca.display())
    };
    let url = agora_platform::config::DatabaseUrl::new(verified(&ca, "catalog-tls"));
    let mut c = start_with(db, |s| s.database_url = url).await;
    family(&mut c.client, "Lamps").await;

    use sqlx::Connection as _;
    let mut observer = sqlx::PgConnection::connect(&format!("{base}?sslmode=disable")).await.unwrap();
    let (all_tls, connections): (Option<bool>, i64) = sqlx::query_as(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'catalog-tls'",
    )
    .fetch_one(&mut observer)
    .await
    .unwrap();
    assert!(connections > 0 && all_tls == Some(true), "{connections} connections, TLS: {all_tls:?}");

    let stranger =
        sqlx::PgConnection::connect(&verified(&pki().dir().join("ca.pem"), "stranger")).await.unwrap_err();
    let chain = agora_platform::error::chain(&stranger);
    assert!(chain.contains("invalid peer certificate"), "{chain}");
}
