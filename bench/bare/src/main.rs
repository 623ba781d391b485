//! `agora-bench-bare`: the physical limits that `make bench` measures the
//! catalog against. A tonic server with no middleware, no health and no
//! reflection:
//!
//! - `GetProduct` answers from a `HashMap` filled once at start from the
//!   catalog's SQLite file: no database on the request path.
//! - `StreamProducts` is the least work the catalog's stream can do on
//!   sqlx: one statement over every product in creation order, read as
//!   sqlx streams its rows, 128 products a message (as the catalog sends
//!   them), no filter, no page, no limit on stalled readers.
//!
//! Every other RPC is UNIMPLEMENTED.
//!
//! With `AGORA_BARE_STACK=contract` the same server runs behind the least
//! stack that keeps the services' runtime contract (see `contract`): the
//! bound of the catalog's GetProduct.
//!
//! Configured like the services: `AGORA_GRPC_ADDR` (default
//! `127.0.0.1:0`) and `AGORA_DATABASE_URL` (`sqlite:<path>`, required).
//! The first stdout line is `agora-bench-bare listening grpc=<addr>`.

use std::{collections::HashMap, io::Write as _, pin::Pin, str::FromStr as _, sync::Arc};

use agora_contracts::agora::{
    catalog::v1::{
        self as pb,
        catalog_service_server::{CatalogService, CatalogServiceServer},
    },
    common::v1::Money,
};
use anyhow::Context as _;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use sqlx::{
    Row as _,
    sqlite::{SqliteConnectOptions, SqlitePool, SqliteRow},
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

mod contract;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Every product, in creation order, in the columns `product` reads.
const PRODUCTS: &str = "SELECT product_id, display_name, description, family_id, currency_code, amount_minor, \
                        state, revision, create_time, update_time FROM products ORDER BY seq";

/// Products a StreamProducts message: about as many as the catalog puts in
/// each of its messages of at most 32 KiB.
const STREAM_BATCH: usize = 128;

/// A product row as the wire tells it.
fn product(row: &SqliteRow) -> Result<pb::Product, sqlx::Error> {
    let state: &str = row.try_get(6)?;
    let revision: i64 = row.try_get(7)?;
    Ok(pb::Product {
        product_id: row.try_get(0)?,
        display_name: row.try_get(1)?,
        description: row.try_get(2)?,
        family_id: row.try_get(3)?,
        price: Some(Money { currency_code: row.try_get(4)?, amount_minor: row.try_get(5)? }),
        state: if state == "ACTIVE" { pb::ProductState::Active } else { pb::ProductState::Discontinued }
            .into(),
        etag: format!("r{revision}"),
        create_time: Some(timestamp(row.try_get(8)?)),
        update_time: Some(timestamp(row.try_get(9)?)),
    })
}

/// Every product of the catalog file, by id.
async fn load(pool: &SqlitePool) -> anyhow::Result<HashMap<String, pb::Product>> {
    let mut products = HashMap::new();
    let mut rows = sqlx::query(PRODUCTS).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let product = product(&row)?;
        products.insert(product.product_id.clone(), product);
    }
    Ok(products)
}

struct Bare {
    products: Arc<HashMap<String, pb::Product>>,
    /// Read-only connections to the catalog file, for StreamProducts; a
    /// static borrow, so a stream of rows can outlive the call that began it.
    pool: &'static SqlitePool,
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("the bare benchmark server answers GetProduct and StreamProducts only"))
}

#[tonic::async_trait]
impl CatalogService for Bare {
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = request.into_inner().product_id;
        match self.products.get(&id) {
            Some(product) => Ok(Response::new(pb::GetProductResponse { product: Some(product.clone()) })),
            None => Err(Status::not_found(format!("product {id} not found"))),
        }
    }

    async fn create_family(
        &self,
        _: Request<pb::CreateFamilyRequest>,
    ) -> Result<Response<pb::CreateFamilyResponse>, Status> {
        unimplemented()
    }

    async fn get_family(
        &self,
        _: Request<pb::GetFamilyRequest>,
    ) -> Result<Response<pb::GetFamilyResponse>, Status> {
        unimplemented()
    }

    async fn list_families(
        &self,
        _: Request<pb::ListFamiliesRequest>,
    ) -> Result<Response<pb::ListFamiliesResponse>, Status> {
        unimplemented()
    }

    async fn create_product(
        &self,
        _: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        unimplemented()
    }

    async fn batch_get_products(
        &self,
        _: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        unimplemented()
    }

    async fn list_products(
        &self,
        _: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        unimplemented()
    }

    async fn update_product(
        &self,
        _: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        unimplemented()
    }

    async fn discontinue_product(
        &self,
        _: Request<pb::DiscontinueProductRequest>,
    ) -> Result<Response<pb::DiscontinueProductResponse>, Status> {
        unimplemented()
    }

    type StreamProductsStream = ResponseStream<pb::StreamProductsResponse>;

    async fn stream_products(
        &self,
        _: Request<pb::StreamProductsRequest>,
    ) -> Result<Response<Self::StreamProductsStream>, Status> {
        let messages = sqlx::query(PRODUCTS).fetch(self.pool).try_chunks(STREAM_BATCH).map(|rows| {
            let rows = rows.map_err(|e| Status::internal(e.1.to_string()))?;
            let products = rows.iter().map(product).collect::<Result<_, _>>();
            Ok(pb::StreamProductsResponse {
                products: products.map_err(|e| Status::internal(e.to_string()))?,
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    type WatchCatalogEventsStream = ResponseStream<pb::WatchCatalogEventsResponse>;

    async fn watch_catalog_events(
        &self,
        _: Request<pb::WatchCatalogEventsRequest>,
    ) -> Result<Response<Self::WatchCatalogEventsStream>, Status> {
        unimplemented()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("AGORA_GRPC_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let url =
        std::env::var("AGORA_DATABASE_URL").context("AGORA_DATABASE_URL (sqlite:<path>) is required")?;
    let options = SqliteConnectOptions::from_str(&url)
        .with_context(|| format!("parsing {url}"))?
        .read_only(true)
        // Rows cross from the connection's thread in channels as large as the catalog's.
        .row_buffer_size(512);
    let pool: &'static SqlitePool = Box::leak(Box::new(SqlitePool::connect_with(options).await?));
    let products = Arc::new(load(pool).await.with_context(|| format!("reading {url}"))?);
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    println!("agora-bench-bare listening grpc={} products={}", listener.local_addr()?, products.len());
    std::io::stdout().flush()?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let mut server = tonic::transport::Server::builder();
    // TLS when given a certificate and its key (the variables the services
    // read), for the reference of the catalog's TLS rows.
    if let (Ok(cert), Ok(key)) = (std::env::var("AGORA_TLS_CERT_FILE"), std::env::var("AGORA_TLS_KEY_FILE")) {
        let identity = tonic::transport::Identity::from_pem(std::fs::read(&cert)?, std::fs::read(&key)?);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let service = CatalogServiceServer::new(Bare { products, pool });
    // TCP_NODELAY as tonic's own `serve` sets it: a response is not held back by Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    if std::env::var("AGORA_BARE_STACK").as_deref() == Ok("contract") {
        contract::init_logs();
        contract::init_metrics();
        let paths = [
            "/agora.catalog.v1.CatalogService/GetProduct",
            "/agora.catalog.v1.CatalogService/StreamProducts",
        ];
        let stack = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(contract::CountedId::default()))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(contract::call_span)
                    .on_failure(contract::warn_on_failure),
            )
            .layer(contract::MeteredLayer::new(&paths))
            .layer(CatchPanicLayer::custom(contract::internal_on_panic))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(contract::CONCURRENCY_LIMIT))
            // With the issuer's keys (the TLS and token row), every call's token checked.
            .option_layer(contract::Tokens::from_env()?.map(|tokens| {
                ServiceBuilder::new()
                    .map_response(|r: http::Response<_>| r.map(tonic::body::Body::new))
                    .layer(tonic::service::InterceptorLayer::new(tokens))
                    .into_inner()
            }))
            .into_inner();
        server
            .timeout(contract::REQUEST_TIMEOUT)
            .layer(stack)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await?;
    } else {
        server.add_service(service).serve_with_incoming_shutdown(incoming, stop).await?;
    }
    Ok(())
}
