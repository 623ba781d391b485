//! The gRPC adapter of the catalog: each handler converts the request into
//! domain values (every invalid field reported at once), asks the store, and
//! converts the answer back. Handlers stay short; the rules live in
//! `domain`, the SQL in `store`.

use std::{collections::HashMap, pin::Pin};

use agora_contracts::agora::{
    catalog::v1::{self as pb, catalog_service_server::CatalogService},
    common::v1::Money as PbMoney,
};
use agora_platform::{
    Error, Shutdown, Violations,
    outbox::{Outbox, StoredEvent},
    wire::{PageToken, page_size, timestamp_from_micros},
};
use futures_util::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        self, CatalogEvent, Family, MAX_BATCH, Money, NewFamily, NewProduct, Product, ProductPatch,
        ProductState,
    },
    store::{CatalogStore, Created, ProductFilter},
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Products per StreamProducts message: big enough to amortise a message,
/// small enough that a slow reader holds little in flight.
const STREAM_BATCH: u32 = 500;

/// The catalog's `CatalogService` implementation.
#[derive(Debug, Clone)]
pub struct CatalogApi {
    store: CatalogStore,
    outbox: Outbox,
    /// Ends open streams when the server shuts down.
    shutdown: Shutdown,
}

impl CatalogApi {
    pub fn new(store: CatalogStore, outbox: Outbox, shutdown: Shutdown) -> Self {
        Self { store, outbox, shutdown }
    }
}

/// A stored outbox event as the published language tells it.
fn event_to_pb(stored: StoredEvent) -> Result<pb::CatalogEvent, Status> {
    let event: CatalogEvent = serde_json::from_str(&stored.payload).map_err(|e| {
        Status::from(Error::Internal(anyhow::Error::new(e).context("decoding an outbox event")))
    })?;
    let kind = match event {
        CatalogEvent::ProductCreated(p) => {
            pb::catalog_event::Kind::ProductCreated(pb::ProductCreated { product: Some(product_to_pb(p)) })
        }
        CatalogEvent::ProductUpdated(p) => {
            pb::catalog_event::Kind::ProductUpdated(pb::ProductUpdated { product: Some(product_to_pb(p)) })
        }
        CatalogEvent::ProductDiscontinued { product_id } => {
            pb::catalog_event::Kind::ProductDiscontinued(pb::ProductDiscontinued { product_id })
        }
    };
    Ok(pb::CatalogEvent {
        sequence: stored.sequence,
        occur_time: Some(timestamp_from_micros(stored.occur_time)),
        kind: Some(kind),
    })
}

fn family_to_pb(f: Family) -> pb::Family {
    pb::Family {
        family_id: f.id,
        display_name: f.display_name,
        description: f.description,
        create_time: Some(timestamp_from_micros(f.create_time)),
    }
}

fn state_to_pb(state: ProductState) -> pb::ProductState {
    match state {
        ProductState::Active => pb::ProductState::Active,
        ProductState::Discontinued => pb::ProductState::Discontinued,
    }
}

pub(crate) fn product_to_pb(p: Product) -> pb::Product {
    pb::Product {
        etag: p.etag(),
        product_id: p.id,
        display_name: p.display_name,
        description: p.description,
        family_id: p.family_id,
        price: Some(PbMoney { currency_code: p.price.currency_code, amount_minor: p.price.amount_minor }),
        state: state_to_pb(p.state).into(),
        create_time: Some(timestamp_from_micros(p.create_time)),
        update_time: Some(timestamp_from_micros(p.update_time)),
    }
}

/// A price from the wire; problems are reported under `field`.
fn parse_price(v: &mut Violations, field: &str, price: Option<&PbMoney>) -> Option<Money> {
    let Some(price) = price else {
        v.add(field, "is required");
        return None;
    };
    match Money::parse(&price.currency_code, price.amount_minor) {
        Ok(money) => Some(money),
        Err(problems) => {
            for (part, description) in problems {
                v.add(format!("{field}.{part}"), description);
            }
            None
        }
    }
}

/// A state filter: UNSPECIFIED is "any".
fn parse_state_filter(v: &mut Violations, field: &str, raw: i32) -> Option<ProductState> {
    match pb::ProductState::try_from(raw) {
        Ok(pb::ProductState::Unspecified) => None,
        Ok(pb::ProductState::Active) => Some(ProductState::Active),
        Ok(pb::ProductState::Discontinued) => Some(ProductState::Discontinued),
        Err(_) => {
            v.add(field, format!("{raw} is not a ProductState"));
            None
        }
    }
}

fn parse_new_product(product: Option<pb::Product>) -> Result<NewProduct, Error> {
    let Some(p) = product else {
        return Err(Error::invalid("product", "is required"));
    };
    let mut v = Violations::new();
    let display_name = v.check("product.display_name", domain::parse_display_name(&p.display_name));
    let description = v.check("product.description", domain::parse_description(&p.description));
    let family_id = v.check("product.family_id", domain::parse_id(&p.family_id));
    let price = parse_price(&mut v, "product.price", p.price.as_ref());
    v.finish()?;
    Ok(NewProduct {
        display_name: display_name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        family_id: family_id.unwrap_or_default(),
        price: price.expect("checked by finish"),
    })
}

/// The fields an UpdateProduct changes. With no mask, every updatable field
/// set in the request is updated (AIP-134).
fn parse_patch(p: &pb::Product, mask: Option<prost_types::FieldMask>) -> Result<ProductPatch, Error> {
    let mut v = Violations::new();
    let paths: Vec<String> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths,
        _ => {
            let mut implied = Vec::new();
            for (set, path) in [
                (!p.display_name.is_empty(), "display_name"),
                (!p.description.is_empty(), "description"),
                (!p.family_id.is_empty(), "family_id"),
                (p.price.is_some(), "price"),
            ] {
                if set {
                    implied.push(path.to_owned());
                }
            }
            implied
        }
    };
    let mut patch = ProductPatch::default();
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                patch.display_name =
                    v.check("product.display_name", domain::parse_display_name(&p.display_name))
            }
            "description" => {
                patch.description = v.check("product.description", domain::parse_description(&p.description))
            }
            "family_id" => patch.family_id = v.check("product.family_id", domain::parse_id(&p.family_id)),
            "price" => patch.price = parse_price(&mut v, "product.price", p.price.as_ref()),
            "product_id" | "state" | "etag" | "create_time" | "update_time" => {
                v.add("update_mask", format!("{path:?} cannot be updated"))
            }
            other => v.add("update_mask", format!("{other:?} is not a field of Product")),
        }
    }
    if paths.is_empty() {
        v.add("update_mask", "names no field to update");
    }
    v.finish()?;
    Ok(patch)
}

fn required_id(field: &str, raw: &str) -> Result<String, Error> {
    domain::parse_id(raw).map_err(|d| Error::invalid(field, d))
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn create_family(
        &self,
        request: Request<pb::CreateFamilyRequest>,
    ) -> Result<Response<pb::CreateFamilyResponse>, Status> {
        let Some(f) = request.into_inner().family else {
            return Err(Error::invalid("family", "is required").into());
        };
        let mut v = Violations::new();
        let display_name = v.check("family.display_name", domain::parse_display_name(&f.display_name));
        let description = v.check("family.description", domain::parse_description(&f.description));
        v.finish()?;
        let new = NewFamily {
            display_name: display_name.unwrap_or_default(),
            description: description.unwrap_or_default(),
        };
        let family = self.store.create_family(new).await?;
        Ok(Response::new(pb::CreateFamilyResponse { family: Some(family_to_pb(family)) }))
    }

    async fn get_family(
        &self,
        request: Request<pb::GetFamilyRequest>,
    ) -> Result<Response<pb::GetFamilyResponse>, Status> {
        let id = required_id("family_id", &request.into_inner().family_id)?;
        let family = self.store.get_family(&id).await?;
        Ok(Response::new(pb::GetFamilyResponse { family: Some(family_to_pb(family)) }))
    }

    async fn list_families(
        &self,
        request: Request<pb::ListFamiliesRequest>,
    ) -> Result<Response<pb::ListFamiliesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check("page_token", PageToken::decode(&req.page_token, "families"));
        v.finish()?;
        let page = self.store.list_families(after.flatten(), limit.unwrap_or_default()).await?;
        Ok(Response::new(pb::ListFamiliesResponse {
            families: page.items.into_iter().map(family_to_pb).collect(),
            next_page_token: page
                .next_after
                .map(|after| PageToken { after, filter: "families".into() }.encode())
                .unwrap_or_default(),
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let req = request.into_inner();
        let request_id = domain::parse_request_id(&req.request_id);
        let new = parse_new_product(req.product);
        let (request_id, new) = match (request_id, new) {
            (Ok(r), Ok(n)) => (r, n),
            (r, n) => {
                // Report the key's problem together with the product's.
                let mut violations = Vec::new();
                if let Err(d) = r {
                    violations.push(agora_platform::error::FieldViolation {
                        field: "request_id".into(),
                        description: d,
                    });
                }
                if let Err(Error::InvalidArgument(more)) = n {
                    violations.extend(more);
                }
                return Err(Error::InvalidArgument(violations).into());
            }
        };
        let product = match self.store.create_product(request_id.as_deref(), new).await? {
            Created::New(p) => {
                tracing::info!(product_id = %p.id, "product created");
                p
            }
            Created::Replayed(p) => p,
        };
        Ok(Response::new(pb::CreateProductResponse { product: Some(product_to_pb(product)) }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = required_id("product_id", &request.into_inner().product_id)?;
        let product = self.store.get_product(&id).await?;
        Ok(Response::new(pb::GetProductResponse { product: Some(product_to_pb(product)) }))
    }

    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let ids = request.into_inner().product_ids;
        let mut v = Violations::new();
        if ids.is_empty() {
            v.add("product_ids", "must name at least one product");
        }
        if ids.len() > MAX_BATCH {
            v.add("product_ids", format!("must name at most {MAX_BATCH} products"));
        }
        for (i, id) in ids.iter().enumerate() {
            v.check(&format!("product_ids[{i}]"), domain::parse_id(id));
        }
        v.finish()?;
        let found: HashMap<String, Product> =
            self.store.get_products(&ids).await?.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut products = Vec::with_capacity(ids.len());
        let mut missing_product_ids = Vec::new();
        for id in ids {
            match found.get(&id) {
                // A repeated id is answered each time it is asked.
                Some(p) => products.push(product_to_pb(p.clone())),
                None => missing_product_ids.push(id),
            }
        }
        Ok(Response::new(pb::BatchGetProductsResponse { products, missing_product_ids }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let filter = ProductFilter {
            family_id: (!req.family_id.is_empty()).then_some(req.family_id),
            state: parse_state_filter(&mut v, "state", req.state),
        };
        let fingerprint = filter.fingerprint();
        let after = v.check("page_token", PageToken::decode(&req.page_token, &fingerprint));
        v.finish()?;
        let page = self.store.list_products(&filter, after.flatten(), limit.unwrap_or_default()).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.items.into_iter().map(product_to_pb).collect(),
            next_page_token: page
                .next_after
                .map(|after| PageToken { after, filter: fingerprint }.encode())
                .unwrap_or_default(),
        }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let req = request.into_inner();
        let Some(p) = req.product else {
            return Err(Error::invalid("product", "is required").into());
        };
        let id = required_id("product.product_id", &p.product_id)?;
        let patch = parse_patch(&p, req.update_mask)?;
        let product = self.store.update_product(&id, &p.etag, &patch).await?;
        tracing::info!(product_id = %product.id, "product updated");
        Ok(Response::new(pb::UpdateProductResponse { product: Some(product_to_pb(product)) }))
    }

    async fn discontinue_product(
        &self,
        request: Request<pb::DiscontinueProductRequest>,
    ) -> Result<Response<pb::DiscontinueProductResponse>, Status> {
        let req = request.into_inner();
        let id = required_id("product_id", &req.product_id)?;
        let product = self.store.discontinue_product(&id, &req.etag).await?;
        Ok(Response::new(pb::DiscontinueProductResponse { product: Some(product_to_pb(product)) }))
    }

    type StreamProductsStream = ResponseStream<pb::StreamProductsResponse>;

    async fn stream_products(
        &self,
        request: Request<pb::StreamProductsRequest>,
    ) -> Result<Response<Self::StreamProductsStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = ProductFilter {
            family_id: (!req.family_id.is_empty()).then_some(req.family_id),
            state: parse_state_filter(&mut v, "state", req.state),
        };
        v.finish()?;
        let stream = self.store.stream_products(filter, STREAM_BATCH).map(|batch| match batch {
            Ok(products) => {
                Ok(pb::StreamProductsResponse { products: products.into_iter().map(product_to_pb).collect() })
            }
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchCatalogEventsStream = ResponseStream<pb::WatchCatalogEventsResponse>;

    async fn watch_catalog_events(
        &self,
        request: Request<pb::WatchCatalogEventsRequest>,
    ) -> Result<Response<Self::WatchCatalogEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        self.outbox.check_cursor(after).await?;
        let stream = self.outbox.watch(after, self.shutdown.clone()).map(|item| {
            let (stored, head) = item?;
            Ok(pb::WatchCatalogEventsResponse { event: Some(event_to_pb(stored)?), head_sequence: head })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
