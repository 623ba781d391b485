//! The gRPC adapter of the shopping context: convert → domain (asking the
//! upstreams through the anti-corruption layer where the rules need them)
//! → convert. Every invalid field of a request is reported at once.
//!
//! Only CreateShoppingList and AddItem may ask an upstream, and only about
//! a customer or product shopping has not heard of yet; the other calls
//! touch this context's own database only, so an outage of catalog or
//! customers leaves them working.

use agora_contracts::agora::shopping::v1::{
    self as pb,
    shopping_list_service_server::{SERVICE_NAME, ShoppingListService},
};
use agora_platform::{
    Database, Error, UnitOfWork, Violations,
    deadline::Deadline,
    security::{Access, Grant, Policy, Rule},
    upstream::hosts::{Hosts, Needs},
    wire::{Answer, Paging, new_id, now_micros, reply, required, required_id, timestamp_from_micros},
};
use tonic::Request;

use crate::{
    domain::{self, NewList, ShoppingList},
    store,
};

/// Who may call what. A shopping list is its customer's alone: not even
/// staff read it. No service calls shopping.
pub const POLICY: Policy = Policy {
    service: SERVICE_NAME,
    rules: &[
        Rule::new("CreateShoppingList", Access::Owner),
        Rule::new("GetShoppingList", Access::Owner),
        Rule::new("ListShoppingLists", Access::Owner),
        Rule::new("AddItem", Access::Owner),
        Rule::new("RemoveItem", Access::Owner),
        Rule::new("DeleteShoppingList", Access::Owner),
    ],
};

/// Whose a list is, for [`Grant::owned`].
fn owner(list: &ShoppingList) -> Option<&str> {
    Some(&list.customer_id)
}

/// The shopping context's `ShoppingListService` implementation.
#[derive(Debug, Clone)]
pub struct ShoppingApi {
    pub(crate) db: Database,
    /// Catalog and customers, asked through [`upstream`].
    pub(crate) hosts: Hosts,
}

impl From<ShoppingList> for pb::ShoppingList {
    fn from(l: ShoppingList) -> Self {
        Self {
            etag: l.etag(),
            list_id: l.id,
            customer_id: l.customer_id,
            title: l.title,
            items: l
                .items
                .into_iter()
                .map(|i| pb::ListItem {
                    product_id: i.product_id,
                    quantity: i.quantity,
                    available: i.available,
                })
                .collect(),
            create_time: Some(timestamp_from_micros(l.create_time)),
            update_time: Some(timestamp_from_micros(l.update_time)),
        }
    }
}

impl TryFrom<pb::CreateShoppingListRequest> for NewList {
    type Error = Error;

    /// The owner and the title; anything else in the list is ignored, as
    /// the contract says: a list starts empty.
    fn try_from(request: pb::CreateShoppingListRequest) -> Result<Self, Error> {
        let l = required("shopping_list", request.shopping_list)?;
        let mut v = Violations::new();
        let customer_id = v.check("shopping_list.customer_id", domain::parse_id(&l.customer_id));
        let title = v.check("shopping_list.title", domain::parse_title(&l.title));
        v.finish()?;
        Ok(Self { customer_id: customer_id.unwrap_or_default(), title: title.unwrap_or_default() })
    }
}

/// What an AddItem asks for.
#[derive(Debug)]
struct ItemToAdd {
    list_id: String,
    product_id: String,
    quantity: i32,
    etag: String,
}

impl TryFrom<pb::AddItemRequest> for ItemToAdd {
    type Error = Error;

    fn try_from(r: pb::AddItemRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let list_id = v.check("list_id", domain::parse_id(&r.list_id));
        let product_id = v.check("product_id", domain::parse_id(&r.product_id));
        let quantity = v.check("quantity", domain::parse_quantity(r.quantity));
        v.finish()?;
        Ok(Self {
            list_id: list_id.unwrap_or_default(),
            product_id: product_id.unwrap_or_default(),
            quantity: quantity.unwrap_or_default(),
            etag: r.etag,
        })
    }
}

/// The list and product of a RemoveItem, checked together.
fn parse_removal(r: &pb::RemoveItemRequest) -> Result<(String, String), Error> {
    let mut v = Violations::new();
    let list_id = v.check("list_id", domain::parse_id(&r.list_id));
    let product_id = v.check("product_id", domain::parse_id(&r.product_id));
    v.finish()?;
    Ok((list_id.unwrap_or_default(), product_id.unwrap_or_default()))
}

/// What page tokens of ListShoppingLists are bound to: the customer whose
/// lists they page through.
fn list_filter(customer_id: &str) -> String {
    format!("customer={customer_id}")
}

impl ShoppingApi {
    /// A unit of work in which what `needs` names is so and stays so until
    /// it ends ([`Hosts::begin_checked`]): a deletion or discontinuation
    /// the feeds apply at the same time either comes first (the write is
    /// refused) or waits for this commit and then deletes the new list or
    /// marks the new item unavailable. Only a product or customer shopping
    /// has not heard of yet is asked of its upstream.
    async fn begin_checked(&self, needs: Needs<'_>, deadline: Option<Deadline>) -> Result<UnitOfWork, Error> {
        self.hosts.begin_checked(&self.db, needs, deadline).await.map_err(|refusal| {
            refusal.error(|product_id| {
                format!("product {product_id} is discontinued; only products on sale can be added to a list")
            })
        })
    }
}

#[tonic::async_trait]
impl ShoppingListService for ShoppingApi {
    async fn create_shopping_list(
        &self,
        req: Request<pb::CreateShoppingListRequest>,
    ) -> Answer<pb::CreateShoppingListResponse> {
        let deadline = Deadline::of(&req);
        let (grant, req) = Grant::split(req)?;
        let new = NewList::try_from(req)?;
        grant.check_owner(&new.customer_id)?;
        let mut uow = self
            .begin_checked(Needs { customer: Some(&new.customer_id), ..Needs::default() }, deadline)
            .await?;
        let list = ShoppingList::create(new_id("lst"), new, now_micros());
        store::insert(&mut uow, &list).await?;
        uow.commit().await?;
        tracing::info!(list_id = %list.id, customer_id = %list.customer_id, "shopping list created");
        reply(pb::CreateShoppingListResponse { shopping_list: Some(list.into()) })
    }

    async fn get_shopping_list(
        &self,
        req: Request<pb::GetShoppingListRequest>,
    ) -> Answer<pb::GetShoppingListResponse> {
        let (grant, req) = Grant::split(req)?;
        let id = required_id("list_id", &req.list_id)?;
        let list = grant.owned(store::list(&self.db, &id).await, owner)?;
        reply(pb::GetShoppingListResponse { shopping_list: Some(list.into()) })
    }

    async fn list_shopping_lists(
        &self,
        req: Request<pb::ListShoppingListsRequest>,
    ) -> Answer<pb::ListShoppingListsResponse> {
        let (grant, req) = Grant::split(req)?;
        let mut v = Violations::new();
        // Not asked of customers: an unknown customer simply has no lists.
        let customer_id = v.check("customer_id", domain::parse_id(&req.customer_id)).unwrap_or_default();
        let paging = Paging::read(&mut v, req.page_size, &req.page_token, list_filter(&customer_id));
        v.finish()?;
        grant.check_owner(&customer_id)?;
        let page = store::lists_of(&self.db, &customer_id, paging.after, paging.size).await?;
        let (shopping_lists, next_page_token) = paging.answer(page);
        reply(pb::ListShoppingListsResponse { shopping_lists, next_page_token })
    }

    async fn add_item(&self, req: Request<pb::AddItemRequest>) -> Answer<pb::AddItemResponse> {
        let deadline = Deadline::of(&req);
        let (grant, req) = Grant::split(req)?;
        let add = ItemToAdd::try_from(req)?;
        // Whose the list is, before the catalog is asked about a product
        // for a list the caller may not touch.
        if let Grant::Owner(_) = grant {
            grant.owned(store::list(&self.db, &add.list_id).await, owner)?;
        }
        // The product is checked before the list is locked: on PostgreSQL
        // the feeds' changes take their locks in that order too.
        let needs = Needs { product_on_sale: Some(&add.product_id), ..Needs::default() };
        let mut uow = self.begin_checked(needs, deadline).await?;
        let mut list = grant.owned(store::lock(&mut uow, &add.list_id).await, owner)?;
        let addition = list.add_item(&add.product_id, add.quantity, &add.etag, now_micros())?;
        store::save_addition(&mut uow, &list, &add.product_id, addition).await?;
        uow.commit().await?;
        tracing::info!(list_id = %list.id, product_id = %add.product_id, quantity = add.quantity, "item added");
        reply(pb::AddItemResponse { shopping_list: Some(list.into()) })
    }

    async fn remove_item(&self, req: Request<pb::RemoveItemRequest>) -> Answer<pb::RemoveItemResponse> {
        let (grant, req) = Grant::split(req)?;
        let (list_id, product_id) = parse_removal(&req)?;
        let mut uow = self.db.begin().await?;
        let mut list = grant.owned(store::lock(&mut uow, &list_id).await, owner)?;
        if list.remove_item(&product_id, &req.etag, now_micros())? {
            store::save_removal(&mut uow, &list, &product_id).await?;
            uow.commit().await?;
            tracing::info!(list_id = %list.id, product_id = %product_id, "item removed");
        }
        reply(pb::RemoveItemResponse { shopping_list: Some(list.into()) })
    }

    async fn delete_shopping_list(
        &self,
        req: Request<pb::DeleteShoppingListRequest>,
    ) -> Answer<pb::DeleteShoppingListResponse> {
        let (grant, req) = Grant::split(req)?;
        let id = required_id("list_id", &req.list_id)?;
        let mut uow = self.db.begin().await?;
        grant.owned(store::lock(&mut uow, &id).await, owner)?.delete(&req.etag)?;
        store::delete(&mut uow, &id).await?;
        uow.commit().await?;
        tracing::info!(list_id = %id, "shopping list deleted");
        reply(pb::DeleteShoppingListResponse {})
    }
}
