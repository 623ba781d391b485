//! The gRPC adapter of the catalog: each handler converts the request into
//! domain values ([`convert`]), runs the use case (a read, or a unit of
//! work around the aggregate's own method), and converts the answer back.
//! The rules live in `domain`, the SQL in `store`.

pub mod convert;

use std::{collections::HashMap, sync::Arc};

use agora_contracts::agora::catalog::v1::{
    self as pb,
    catalog_service_server::{CatalogService, SERVICE_NAME},
};
use agora_platform::{
    Database, Error, Shutdown, UnitOfWork, Violations,
    db::Filter,
    outbox::{Outbox, ResponseStream},
    security::{Access, Audit, Policy, Rule},
    wire::{Answer, Paging, chunks_by_bytes, new_id, now_micros, reply, required, required_id},
};
use futures_util::StreamExt as _;
use tonic::{Request, Status};

use crate::{
    cache::ProductCache,
    domain::{self, CatalogEvent, Family, MAX_BATCH, Product},
    store,
};

/// Who may call what. Everyone signed in reads the catalog; staff change
/// it, and every change is audited; offers and shopping get what the
/// context map grants them (GetProduct and the change feed).
pub const POLICY: Policy = Policy {
    service: SERVICE_NAME,
    rules: &[
        Rule::new("CreateFamily", Access::Staff).audited(),
        Rule::new("GetFamily", Access::Everyone),
        Rule::new("ListFamilies", Access::Everyone),
        Rule::new("CreateProduct", Access::Staff).audited(),
        Rule::new("GetProduct", Access::Everyone),
        Rule::new("BatchGetProducts", Access::Everyone),
        Rule::new("ListProducts", Access::Everyone),
        Rule::new("UpdateProduct", Access::Staff).audited(),
        Rule::new("DiscontinueProduct", Access::Staff).audited(),
        Rule::new("StreamProducts", Access::Everyone),
        Rule::new("WatchCatalogEvents", Access::Services),
    ],
};

/// Products StreamProducts reads from the database at a time, sent as
/// messages of at most 32 KiB (`chunks_by_bytes`: about 130 products of a
/// usual size each). Each read is a query of its own on a pooled
/// connection; 256 rows a read rather than 128 cut a row's CPU by 6 % and
/// keep what a stalled reader holds to one read (`make bench`, abuse rows).
const STREAM_BATCH: u32 = 256;

/// What page tokens of ListFamilies are bound to: it has no filter, but a
/// token of another list must still be refused.
const FAMILIES: &str = "families";

/// The catalog's `CatalogService` implementation.
#[derive(Debug, Clone)]
pub struct CatalogApi {
    db: Database,
    outbox: Outbox,
    /// GetProduct's reads, dropped when a product changes.
    cache: Arc<ProductCache>,
    /// Ends open streams when the server shuts down.
    shutdown: Shutdown,
}

impl CatalogApi {
    pub fn new(db: Database, outbox: Outbox, cache: Arc<ProductCache>, shutdown: Shutdown) -> Self {
        Self { db, outbox, cache, shutdown }
    }

    /// Saves a product an aggregate method changed, with its event, in the
    /// unit of work it was loaded in.
    async fn save(&self, mut uow: UnitOfWork, product: &Product, event: CatalogEvent) -> Result<(), Error> {
        store::save_product(&mut uow, product).await?;
        uow.record(&event).await?;
        let committed = uow.commit().await;
        // Whatever the outcome (a failed commit may still have landed):
        // this replica's next read goes to the database.
        self.cache.changed(&product.id);
        committed
    }
}

/// A filter of ListProducts or StreamProducts; problems are collected in `v`.
fn product_filter(v: &mut Violations, family_id: String, state: i32) -> Filter {
    store::product_filter(
        (!family_id.is_empty()).then_some(family_id),
        convert::state_filter(v, "state", state),
    )
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn create_family(&self, req: Request<pb::CreateFamilyRequest>) -> Answer<pb::CreateFamilyResponse> {
        let audit = Audit::of(&req);
        let new = convert::new_family(req.into_inner())?;
        let family = Family {
            id: new_id("fam"),
            display_name: new.display_name,
            description: new.description,
            create_time: now_micros(),
        };
        store::insert_family(&self.db, &family).await?;
        audit.resource(&family.id);
        reply(pb::CreateFamilyResponse { family: Some(family.into()) })
    }

    async fn get_family(&self, req: Request<pb::GetFamilyRequest>) -> Answer<pb::GetFamilyResponse> {
        let id = required_id("family_id", &req.into_inner().family_id)?;
        let family = store::family(&self.db, &id).await?;
        reply(pb::GetFamilyResponse { family: Some(family.into()) })
    }

    async fn list_families(&self, req: Request<pb::ListFamiliesRequest>) -> Answer<pb::ListFamiliesResponse> {
        let req = req.into_inner();
        let paging = Paging::of(req.page_size, &req.page_token, FAMILIES)?;
        let page = store::list_families(&self.db, paging.after, paging.size).await?;
        let (families, next_page_token) = paging.answer(page);
        reply(pb::ListFamiliesResponse { families, next_page_token })
    }

    async fn create_product(
        &self,
        req: Request<pb::CreateProductRequest>,
    ) -> Answer<pb::CreateProductResponse> {
        let audit = Audit::of(&req);
        let (key, new) = convert::new_product(req.into_inner())?;
        let (product, created) = Product::create(new_id("prd"), new, now_micros());
        let mut uow = self.db.begin().await?;
        if let Some(earlier) = uow.claim(key.as_ref(), &product.id).await? {
            drop(uow);
            let product = store::product(&self.db, &earlier).await?;
            audit.resource(&product.id);
            return reply(pb::CreateProductResponse { product: Some(product.into()) });
        }
        if !store::insert_product(&mut uow, &product).await? {
            return Err(Error::invalid("product.family_id", "no family has this id").into());
        }
        uow.record(&created).await?;
        uow.commit().await?;
        audit.resource(&product.id);
        tracing::info!(product_id = %product.id, "product created");
        reply(pb::CreateProductResponse { product: Some(product.into()) })
    }

    async fn get_product(&self, req: Request<pb::GetProductRequest>) -> Answer<pb::GetProductResponse> {
        let id = required_id("product_id", &req.into_inner().product_id)?;
        let product = self.cache.get(&id, || store::product(&self.db, &id)).await?;
        reply(pb::GetProductResponse { product: Some(product.as_ref().clone().into()) })
    }

    async fn batch_get_products(
        &self,
        req: Request<pb::BatchGetProductsRequest>,
    ) -> Answer<pb::BatchGetProductsResponse> {
        let ids = req.into_inner().product_ids;
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
            store::products(&self.db, &ids).await?.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut products = Vec::with_capacity(ids.len());
        let mut missing_product_ids = Vec::new();
        for id in ids {
            match found.get(&id) {
                // A repeated id is answered each time it is asked.
                Some(p) => products.push(p.clone().into()),
                None => missing_product_ids.push(id),
            }
        }
        reply(pb::BatchGetProductsResponse { products, missing_product_ids })
    }

    async fn list_products(&self, req: Request<pb::ListProductsRequest>) -> Answer<pb::ListProductsResponse> {
        let req = req.into_inner();
        let mut v = Violations::new();
        let size = Paging::size(&mut v, req.page_size);
        let filter = product_filter(&mut v, req.family_id, req.state);
        let paging = size.token(&mut v, &req.page_token, filter.fingerprint());
        v.finish()?;
        let page = store::list_products(&self.db, &filter, paging.after, paging.size).await?;
        let (products, next_page_token) = paging.answer(page);
        reply(pb::ListProductsResponse { products, next_page_token })
    }

    async fn update_product(
        &self,
        req: Request<pb::UpdateProductRequest>,
    ) -> Answer<pb::UpdateProductResponse> {
        Audit::of(&req).resource(req.get_ref().product.as_ref().map_or("", |p| p.product_id.as_str()));
        let req = req.into_inner();
        let p = required("product", req.product)?;
        let id = required_id("product.product_id", &p.product_id)?;
        let patch = convert::patch(&p, req.update_mask)?;
        let new_family = patch.family_id.clone();
        let mut uow = self.db.begin().await?;
        let mut product = store::product_to_change(&mut uow, &id).await?;
        let updated = product.update(patch, &p.etag, now_micros())?;
        if let Some(family) = &new_family
            && !store::family_exists(&mut uow, family).await?
        {
            return Err(Error::invalid("product.family_id", "no family has this id").into());
        }
        self.save(uow, &product, updated).await?;
        tracing::info!(product_id = %product.id, "product updated");
        reply(pb::UpdateProductResponse { product: Some(product.into()) })
    }

    async fn discontinue_product(
        &self,
        req: Request<pb::DiscontinueProductRequest>,
    ) -> Answer<pb::DiscontinueProductResponse> {
        Audit::of(&req).resource(&req.get_ref().product_id);
        let req = req.into_inner();
        let id = required_id("product_id", &req.product_id)?;
        let mut uow = self.db.begin().await?;
        let mut product = store::product_to_change(&mut uow, &id).await?;
        if let Some(discontinued) = product.discontinue(&req.etag, now_micros())? {
            self.save(uow, &product, discontinued).await?;
        }
        reply(pb::DiscontinueProductResponse { product: Some(product.into()) })
    }

    type StreamProductsStream = ResponseStream<pb::StreamProductsResponse>;

    async fn stream_products(
        &self,
        req: Request<pb::StreamProductsRequest>,
    ) -> Answer<Self::StreamProductsStream> {
        let req = req.into_inner();
        let mut v = Violations::new();
        let filter = product_filter(&mut v, req.family_id, req.state);
        v.finish()?;
        // A batch of rows becomes as many messages as its size in bytes
        // needs, each within the message size limit.
        let stream = store::stream_products(self.db.clone(), filter, STREAM_BATCH).flat_map(|batch| {
            let messages: Vec<Result<_, Status>> = match batch {
                Ok(products) => chunks_by_bytes(products.into_iter().map(pb::Product::from).collect())
                    .into_iter()
                    .map(|products| Ok(pb::StreamProductsResponse { products }))
                    .collect(),
                Err(err) => vec![Err(err.into())],
            };
            futures_util::stream::iter(messages)
        });
        reply(Box::pin(stream))
    }

    type WatchCatalogEventsStream = ResponseStream<pb::WatchCatalogEventsResponse>;

    async fn watch_catalog_events(
        &self,
        req: Request<pb::WatchCatalogEventsRequest>,
    ) -> Answer<Self::WatchCatalogEventsStream> {
        let after = req.into_inner().after_sequence;
        let stream = self.outbox.serve(after, self.shutdown.clone(), convert::event_kind).await?;
        reply(stream)
    }
}
