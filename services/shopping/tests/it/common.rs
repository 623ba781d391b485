//! The shopping service among its upstreams: real catalog and customers
//! servers in this process, each on its own fresh database on the same
//! backend as shopping's, and small helpers to call them.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

pub use agora_contracts::agora::{
    catalog::v1 as catalog_pb, common::v1::Money, customers::v1 as customers_pb, shopping::v1 as pb,
};
use agora_platform::{Database, upstream::UpstreamSettings};
use agora_shopping::ShoppingSettings;
use agora_testing::Channel;
pub use agora_testing::{Proxy, TestDatabase, TestServer, Who};
use catalog_pb::catalog_service_client::CatalogServiceClient;
use customers_pb::customer_service_client::CustomerServiceClient;
use pb::shopping_list_service_client::ShoppingListServiceClient;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// The longest a test waits for a condition.
pub const BOUND: Duration = Duration::from_secs(10);

/// Shopping, its two upstreams and their databases. Fields drop in order:
/// servers stop before their databases are removed.
pub struct Shop {
    /// Shopping, as [`Self::shopper`].
    pub shopping: ShoppingListServiceClient<Channel>,
    /// The customer who calls shopping: the last one registered, or the
    /// one a helper named, or the owner of the list a helper names.
    pub shopper: Who,
    /// The owner of every list made through [`Shop::create`].
    pub owners: std::collections::HashMap<String, String>,
    pub catalog: CatalogServiceClient<Channel>,
    pub customers: CustomerServiceClient<Channel>,
    pub shopping_server: TestServer,
    /// None while a test has the catalog stopped.
    pub catalog_server: Option<TestServer>,
    /// None while a test has customers stopped.
    pub customers_server: Option<TestServer>,
    pub shopping_db: TestDatabase,
    pub catalog_db: TestDatabase,
    pub customers_db: TestDatabase,
    /// Where shopping finds its upstreams, for a restarted shopping.
    pub upstreams: ShoppingSettings,
}

async fn start_catalog(db: &TestDatabase, addr: Option<SocketAddr>) -> TestServer {
    let mut settings = agora_testing::settings("catalog", db);
    if let Some(addr) = addr {
        settings.grpc_addr = addr;
    }
    TestServer::start(agora_catalog::build(settings).await.expect("catalog builds")).await
}

async fn start_customers(db: &TestDatabase, addr: Option<SocketAddr>) -> TestServer {
    let mut settings = agora_testing::settings("customers", db);
    if let Some(addr) = addr {
        settings.grpc_addr = addr;
    }
    TestServer::start(agora_customers::build(settings).await.expect("customers builds")).await
}

async fn start_shopping(db: &TestDatabase, upstreams: ShoppingSettings) -> TestServer {
    start_shopping_with(db, upstreams, Duration::from_secs(10)).await
}

async fn start_shopping_with(
    db: &TestDatabase,
    upstreams: ShoppingSettings,
    request_timeout: Duration,
) -> TestServer {
    let mut settings = agora_testing::settings("shopping", db);
    settings.request_timeout = request_timeout;
    TestServer::start(agora_shopping::build_with(settings, upstreams).await.expect("shopping builds")).await
}

/// Shopping on `shopping_db`, with catalog and customers on fresh databases
/// of the same backend.
pub async fn start(shopping_db: TestDatabase) -> Shop {
    start_via(shopping_db, false).await.0
}

/// Shopping whose upstreams are reached through test proxies, catalog's
/// first, that refuse their change feeds: shopping hears of no product and
/// no customer from the feeds, so it asks its upstreams about each, and
/// has a minute for every answer (a test may hold answers back).
pub async fn start_unfed(shopping_db: TestDatabase) -> (Shop, [Proxy; 2]) {
    let (shop, proxies) = start_via(shopping_db, true).await;
    (shop, proxies.expect("proxied"))
}

async fn start_via(shopping_db: TestDatabase, proxied: bool) -> (Shop, Option<[Proxy; 2]>) {
    let catalog_db = shopping_db.another().await;
    let customers_db = shopping_db.another().await;
    let catalog_server = start_catalog(&catalog_db, None).await;
    let customers_server = start_customers(&customers_db, None).await;
    let (mut catalog_addr, mut customers_addr) = (catalog_server.grpc_addr, customers_server.grpc_addr);
    let mut patience = None;
    let proxies = if proxied {
        let catalog = Proxy::start(catalog_addr, "shopping").await;
        let customers = Proxy::start(customers_addr, "shopping").await;
        catalog.refuse("WatchCatalogEvents");
        customers.refuse("WatchCustomerEvents");
        (catalog_addr, customers_addr, patience) =
            (catalog.addr, customers.addr, Some(Duration::from_secs(60)));
        Some([catalog, customers])
    } else {
        None
    };
    let mut upstreams = ShoppingSettings {
        catalog: UpstreamSettings::for_tests("catalog", vec![agora_testing::url(catalog_addr)]),
        customers: UpstreamSettings::for_tests("customers", vec![agora_testing::url(customers_addr)]),
    };
    if let Some(patience) = patience {
        upstreams.catalog.call_timeout = patience;
        upstreams.customers.call_timeout = patience;
    }
    let request_timeout = patience.unwrap_or(Duration::from_secs(10));
    let shopping_server = start_shopping_with(&shopping_db, upstreams.clone(), request_timeout).await;
    let shop = Shop {
        shopping: ShoppingListServiceClient::new(shopping_server.channel_as(&Who::Nobody)),
        shopper: Who::Nobody,
        owners: Default::default(),
        catalog: CatalogServiceClient::new(catalog_server.channel.clone()),
        customers: CustomerServiceClient::new(customers_server.channel.clone()),
        shopping_server,
        catalog_server: Some(catalog_server),
        customers_server: Some(customers_server),
        shopping_db,
        catalog_db,
        customers_db,
        upstreams,
    };
    (shop, proxies)
}

impl Shop {
    /// Stops shopping at once, as a crash would, and starts a new process
    /// on the same database.
    pub async fn restart_shopping(&mut self) {
        self.restart_shopping_after(async |_| {}).await;
    }

    /// Stops shopping at once, runs `while_down` on its database, and
    /// starts a new process on that database.
    pub async fn restart_shopping_after(&mut self, while_down: impl AsyncFnOnce(&TestDatabase)) {
        // Its feed consumers stop on this signal, before the new process
        // starts its own; its server is dropped, not drained.
        self.shopping_server.shutdown.trigger();
        while_down(&self.shopping_db).await;
        let fresh = start_shopping(&self.shopping_db, self.upstreams.clone()).await;
        drop(std::mem::replace(&mut self.shopping_server, fresh));
        self.shopping = ShoppingListServiceClient::new(self.shopping_server.channel_as(&self.shopper));
    }

    /// From now on, shopping is called as the customer `customer_id` (an
    /// empty id, which no token can carry, changes nothing).
    pub fn act_as(&mut self, customer_id: &str) {
        if customer_id.is_empty() {
            return;
        }
        let who = Who::customer(customer_id);
        if self.shopper != who {
            self.shopping = ShoppingListServiceClient::new(self.shopping_server.channel_as(&who));
            self.shopper = who;
        }
    }

    /// Where shopping's consumer of `feed` ("catalog" or "customers") has
    /// read up to, from shopping's database.
    pub async fn cursor(&self, feed: &str) -> i64 {
        let db = shopping_database(&self.shopping_db);
        agora_platform::feed::cursor(&db, feed).await.expect("the cursor reads")
    }

    /// A product on sale, in a family of its own.
    pub async fn product(&mut self, name: &str) -> String {
        let family = self
            .catalog
            .create_family(catalog_pb::CreateFamilyRequest {
                family: Some(catalog_pb::Family { display_name: format!("{name}s"), ..Default::default() }),
            })
            .await
            .expect("family created")
            .into_inner()
            .family
            .expect("family in response");
        let product = catalog_pb::Product {
            display_name: name.into(),
            family_id: family.family_id,
            price: Some(Money { currency_code: "EUR".into(), amount_minor: 250 }),
            ..Default::default()
        };
        self.catalog
            .create_product(catalog_pb::CreateProductRequest {
                request_id: String::new(),
                product: Some(product),
            })
            .await
            .expect("product created")
            .into_inner()
            .product
            .expect("product in response")
            .product_id
    }

    /// Takes a product off sale, through the catalog's own API.
    pub async fn discontinue(&mut self, product_id: &str) {
        self.catalog
            .discontinue_product(catalog_pb::DiscontinueProductRequest {
                product_id: product_id.into(),
                etag: String::new(),
            })
            .await
            .expect("product discontinued");
    }

    /// Calls shopping as the owner of `list_id`, when the list is one this
    /// harness made.
    fn act_as_owner_of(&mut self, list_id: &str) {
        if let Some(owner) = self.owners.get(list_id).cloned() {
            self.act_as(&owner);
        }
    }

    /// A client of shopping as the customer `customer_id`.
    pub fn shopping_as(&self, customer_id: &str) -> ShoppingListServiceClient<Channel> {
        ShoppingListServiceClient::new(self.shopping_server.channel_as(&Who::customer(customer_id)))
    }

    /// A client of shopping as the owner of `list_id` (a list this harness made).
    pub fn shopping_of(&self, list_id: &str) -> ShoppingListServiceClient<Channel> {
        self.shopping_as(self.owners.get(list_id).expect("a list made by the harness"))
    }

    /// A registered customer's id; shopping is called as them from now on.
    pub async fn customer(&mut self, email: &str) -> String {
        let customer = customers_pb::Customer {
            given_name: "Ana".into(),
            family_name: "Lima".into(),
            email: email.into(),
            ..Default::default()
        };
        let id = self
            .customers
            .create_customer(customers_pb::CreateCustomerRequest { customer: Some(customer) })
            .await
            .expect("customer created")
            .into_inner()
            .customer
            .expect("customer in response")
            .customer_id;
        self.act_as(&id);
        id
    }

    /// A new list of `customer_id`, asked as them.
    pub async fn create(&mut self, customer_id: &str, title: &str) -> Result<pb::ShoppingList, Status> {
        self.act_as(customer_id);
        let list =
            pb::ShoppingList { customer_id: customer_id.into(), title: title.into(), ..Default::default() };
        let created = self
            .shopping
            .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) })
            .await
            .map(|r| r.into_inner().shopping_list.expect("list in response"))?;
        self.owners.insert(created.list_id.clone(), created.customer_id.clone());
        Ok(created)
    }

    /// A new list of a customer, which must succeed.
    pub async fn list_of(&mut self, customer_id: &str, title: &str) -> pb::ShoppingList {
        self.create(customer_id, title).await.expect("list created")
    }

    /// The list, asked as its owner.
    pub async fn get(&mut self, list_id: &str) -> Result<pb::ShoppingList, Status> {
        self.act_as_owner_of(list_id);
        self.shopping
            .get_shopping_list(pb::GetShoppingListRequest { list_id: list_id.into() })
            .await
            .map(|r| r.into_inner().shopping_list.expect("list in response"))
    }

    pub async fn add(
        &mut self,
        list_id: &str,
        product_id: &str,
        quantity: i32,
        etag: &str,
    ) -> Result<pb::ShoppingList, Status> {
        self.act_as_owner_of(list_id);
        add(&mut self.shopping, list_id, product_id, quantity, etag).await
    }

    pub async fn remove(
        &mut self,
        list_id: &str,
        product_id: &str,
        etag: &str,
    ) -> Result<pb::ShoppingList, Status> {
        self.act_as_owner_of(list_id);
        self.shopping
            .remove_item(pb::RemoveItemRequest {
                list_id: list_id.into(),
                product_id: product_id.into(),
                etag: etag.into(),
            })
            .await
            .map(|r| r.into_inner().shopping_list.expect("list in response"))
    }

    pub async fn delete(&mut self, list_id: &str, etag: &str) -> Result<(), Status> {
        self.act_as_owner_of(list_id);
        self.shopping
            .delete_shopping_list(pb::DeleteShoppingListRequest {
                list_id: list_id.into(),
                etag: etag.into(),
            })
            .await
            .map(drop)
    }

    /// One page of a customer's lists, asked as them.
    pub async fn page(
        &mut self,
        customer_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListShoppingListsResponse, Status> {
        self.act_as(customer_id);
        self.shopping
            .list_shopping_lists(pb::ListShoppingListsRequest {
                customer_id: customer_id.into(),
                page_size,
                page_token: page_token.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Stops the catalog; returns its address, for [`Shop::restart_catalog`].
    pub async fn stop_catalog(&mut self) -> SocketAddr {
        let server = self.catalog_server.take().expect("the catalog is running");
        let addr = server.grpc_addr;
        server.stop().await.expect("the catalog stops cleanly");
        addr
    }

    /// A new catalog on the old address and the old database: the same
    /// catalog, back after a restart.
    pub async fn restart_catalog(&mut self, addr: SocketAddr) {
        let server = start_catalog(&self.catalog_db, Some(addr)).await;
        self.catalog = CatalogServiceClient::new(server.channel.clone());
        self.catalog_server = Some(server);
    }

    /// Stops customers; returns its address, for [`Shop::restart_customers`].
    pub async fn stop_customers(&mut self) -> SocketAddr {
        let server = self.customers_server.take().expect("customers is running");
        let addr = server.grpc_addr;
        server.stop().await.expect("customers stops cleanly");
        addr
    }

    /// A new customers server on the old address and the old database.
    pub async fn restart_customers(&mut self, addr: SocketAddr) {
        let server = start_customers(&self.customers_db, Some(addr)).await;
        self.customers = CustomerServiceClient::new(server.channel.clone());
        self.customers_server = Some(server);
    }
}

/// Shopping's own database, opened from outside the service.
pub fn shopping_database(db: &TestDatabase) -> Database {
    db.open()
}

/// The revision a list's etag is made of (`r<revision>`): how many writes
/// the list has had, the service's own included.
pub fn revision(list: &pb::ShoppingList) -> i64 {
    list.etag.strip_prefix('r').and_then(|n| n.parse().ok()).expect("an etag is r<revision>")
}

/// The products of a list with their availability, in list order.
pub fn availability(list: &pb::ShoppingList) -> Vec<(String, bool)> {
    list.items.iter().map(|i| (i.product_id.clone(), i.available)).collect()
}

/// AddItem through any client, for calls made from spawned tasks.
pub async fn add(
    client: &mut ShoppingListServiceClient<Channel>,
    list_id: &str,
    product_id: &str,
    quantity: i32,
    etag: &str,
) -> Result<pb::ShoppingList, Status> {
    client
        .add_item(pb::AddItemRequest {
            list_id: list_id.into(),
            product_id: product_id.into(),
            quantity,
            etag: etag.into(),
        })
        .await
        .map(|r| r.into_inner().shopping_list.expect("list in response"))
}

/// The products of a list with their quantities, in list order.
pub fn items(list: &pb::ShoppingList) -> Vec<(String, i32)> {
    list.items.iter().map(|i| (i.product_id.clone(), i.quantity)).collect()
}

/// The fields named by the status's google.rpc.BadRequest, after checking
/// the code is INVALID_ARGUMENT.
pub fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries google.rpc.BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// The type of the status's google.rpc.PreconditionFailure, after checking
/// the code is FAILED_PRECONDITION.
pub fn precondition(status: &Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status.get_details_precondition_failure().expect("PreconditionFailure detail").violations[0]
        .r#type
        .clone()
}

/// The (type, name) of the status's google.rpc.ResourceInfo, after checking
/// the code is NOT_FOUND.
pub fn missing(status: &Status) -> (String, String) {
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status.get_details_resource_info().expect("NOT_FOUND carries google.rpc.ResourceInfo");
    (info.resource_type, info.resource_name)
}
