//! The gRPC adapter of the offers context: convert → domain (asking the
//! upstreams through the anti-corruption layer where the rules need them,
//! within the caller's deadline) → convert.

use agora_contracts::agora::offers::v1::{
    self as pb,
    offer_service_server::{OfferService, SERVICE_NAME},
};
use agora_platform::{
    Database, Error, UnitOfWork, Violations,
    db::IdempotencyKey,
    deadline::Deadline,
    middleware::ExtraTrailers,
    security::{Access, Audit, Grant, Policy, Rule},
    upstream::hosts::{Hosts, Needs},
    wire::{
        Answer, Paging, micros_from_timestamp, new_id, now_micros, optional_id, parse_request_id, reply,
        required, required_id, timestamp_from_micros,
    },
};
use std::sync::Arc;

use tonic::{Request, Response};

use crate::{
    cache::AvailableCache,
    domain::{
        self, MAX_AVAILABLE, NewOffer, Offer, OfferEvent, OfferKind, OfferState, Window, WindowProblem,
    },
    fallback::Fallback,
    store,
};

/// Who may call what. Staff create, list and withdraw offers, audited; a
/// customer reads the offers meant for everyone and those meant for them.
/// No service calls offers.
pub const POLICY: Policy = Policy {
    service: SERVICE_NAME,
    rules: &[
        Rule::new("CreateOffer", Access::Staff).audited(),
        Rule::new("GetOffer", Access::StaffOrOwner),
        Rule::new("ListOffers", Access::Staff),
        Rule::new("WithdrawOffer", Access::Staff).audited(),
        Rule::new("ListAvailableOffers", Access::StaffOrOwner),
    ],
};

/// The offers context's `OfferService` implementation.
#[derive(Debug, Clone)]
pub struct OffersApi {
    pub(crate) db: Database,
    /// Catalog and customers, asked through [`upstream`].
    pub(crate) hosts: Hosts,
    pub(crate) fallback: Fallback,
    /// ListAvailableOffers' answers, dropped by every change of offers.
    pub(crate) cache: Arc<AvailableCache>,
}

impl From<Offer> for pb::Offer {
    fn from(o: Offer) -> Self {
        let kind = match o.kind {
            OfferKind::Speed => pb::OfferKind::Speed,
            OfferKind::LastDay => pb::OfferKind::LastDay,
        };
        let state = match o.state {
            OfferState::Active => pb::OfferState::Active,
            OfferState::Withdrawn => pb::OfferState::Withdrawn,
        };
        // Fallback offers have no window and no history: their times stay unset.
        let time = |micros: i64| (micros != 0).then(|| timestamp_from_micros(micros));
        Self {
            etag: if o.revision == 0 { String::new() } else { o.etag() },
            offer_id: o.id,
            product_id: o.product_id,
            customer_id: o.customer_id.unwrap_or_default(),
            kind: kind.into(),
            discount_percent: o.discount_percent,
            start_time: time(o.window.start),
            end_time: time(o.window.end),
            state: state.into(),
            create_time: time(o.create_time),
        }
    }
}

/// The offer to create and its idempotency key.
fn parse_new_offer(
    request: pb::CreateOfferRequest,
    now: i64,
) -> Result<(Option<IdempotencyKey>, NewOffer), Error> {
    let request_id = parse_request_id(&request.request_id).map_err(|d| Error::invalid("request_id", d))?;
    let o = required("offer", request.offer)?;
    let mut v = Violations::new();
    let product_id = v.check("offer.product_id", domain::parse_id(&o.product_id));
    let customer_id = optional_id(&mut v, "offer.customer_id", &o.customer_id);
    let kind = match pb::OfferKind::try_from(o.kind) {
        Ok(pb::OfferKind::Speed) => Some(OfferKind::Speed),
        Ok(pb::OfferKind::LastDay) => Some(OfferKind::LastDay),
        _ => {
            v.add("offer.kind", "must be OFFER_KIND_SPEED or OFFER_KIND_LAST_DAY");
            None
        }
    };
    let discount = v.check("offer.discount_percent", domain::check_discount(o.discount_percent));
    let mut time = |field: &str, ts: Option<&prost_types::Timestamp>| match ts {
        None => {
            v.add(field, "is required");
            None
        }
        Some(ts) => {
            v.check(field, micros_from_timestamp(ts).ok_or_else(|| "is not a valid timestamp".into()))
        }
    };
    let start = time("offer.start_time", o.start_time.as_ref());
    let end = time("offer.end_time", o.end_time.as_ref());
    let window = match (kind, start, end) {
        (Some(kind), Some(start), Some(end)) => match Window::new(kind, start, end, now) {
            Ok(window) => Some(window),
            Err(problem) => {
                let (field, d) = match problem {
                    WindowProblem::Start(d) => ("offer.start_time", d),
                    WindowProblem::End(d) => ("offer.end_time", d),
                };
                v.add(field, d);
                None
            }
        },
        _ => None,
    };
    v.finish()?;
    let new = NewOffer {
        product_id: product_id.unwrap_or_default(),
        customer_id,
        kind: kind.expect("checked"),
        discount_percent: discount.expect("checked"),
        window: window.expect("checked"),
    };
    Ok((IdempotencyKey::of(request_id, "offer", || new.fingerprint()), new))
}

impl OffersApi {
    /// A unit of work in which the offer's product is on sale and its
    /// customer (a personal offer's) registered, and both stay so until it
    /// ends ([`Hosts::begin_checked`]): a discontinuation or a deletion the
    /// feeds apply at the same time either comes first (the offer is
    /// refused) or waits for this commit and then withdraws the new offer
    /// with the others. Only a product or customer offers has not heard of
    /// yet is asked of its upstream. A product discontinued within the
    /// feed's lag may still get an offer: the discontinuation withdraws it
    /// when it arrives, as it does every offer on the product.
    async fn begin_checked(&self, new: &NewOffer, deadline: Option<Deadline>) -> Result<UnitOfWork, Error> {
        let needs = Needs { product_on_sale: Some(&new.product_id), customer: new.customer_id.as_deref() };
        self.hosts.begin_checked(&self.db, needs, deadline).await.map_err(|refusal| {
            refusal.error(|_| "the product is discontinued; offers need a product on sale".into())
        })
    }
}

#[tonic::async_trait]
impl OfferService for OffersApi {
    async fn create_offer(&self, req: Request<pb::CreateOfferRequest>) -> Answer<pb::CreateOfferResponse> {
        let deadline = Deadline::of(&req);
        let audit = Audit::of(&req);
        let now = now_micros();
        let (key, new) = parse_new_offer(req.into_inner(), now)?;
        let mut uow = self.begin_checked(&new, deadline).await?;
        let offer = Offer::create(new_id("off"), new, now);
        if let Some(earlier) = uow.claim(key.as_ref(), &offer.id).await? {
            drop(uow);
            let offer = store::offer(&self.db, &earlier).await?;
            audit.resource(&offer.id);
            return reply(pb::CreateOfferResponse { offer: Some(offer.into()) });
        }
        store::insert(&mut uow, &offer).await?;
        uow.record(&OfferEvent::OfferCreated {
            offer_id: offer.id.clone(),
            product_id: offer.product_id.clone(),
        })
        .await?;
        uow.commit().await?;
        self.cache.changed();
        audit.resource(&offer.id);
        tracing::info!(offer_id = %offer.id, product_id = %offer.product_id, "offer created");
        reply(pb::CreateOfferResponse { offer: Some(offer.into()) })
    }

    async fn get_offer(&self, req: Request<pb::GetOfferRequest>) -> Answer<pb::GetOfferResponse> {
        let (grant, req) = Grant::split(req)?;
        let id = required_id("offer_id", &req.offer_id)?;
        // A personal offer is its customer's; the others are everyone's.
        let offer = grant.owned(store::offer(&self.db, &id).await, |o| o.customer_id.as_deref())?;
        reply(pb::GetOfferResponse { offer: Some(offer.into()) })
    }

    async fn list_offers(&self, req: Request<pb::ListOffersRequest>) -> Answer<pb::ListOffersResponse> {
        let req = req.into_inner();
        let mut v = Violations::new();
        let size = Paging::size(&mut v, req.page_size);
        let state = match pb::OfferState::try_from(req.state) {
            Ok(pb::OfferState::Unspecified) => None,
            Ok(pb::OfferState::Active) => Some(OfferState::Active),
            Ok(pb::OfferState::Withdrawn) => Some(OfferState::Withdrawn),
            Err(_) => {
                v.add("state", format!("{} is not an OfferState", req.state));
                None
            }
        };
        let filter = store::offer_filter((!req.product_id.is_empty()).then_some(req.product_id), state);
        let paging = size.token(&mut v, &req.page_token, filter.fingerprint());
        v.finish()?;
        let page = store::list(&self.db, &filter, paging.after, paging.size).await?;
        let (offers, next_page_token) = paging.answer(page);
        reply(pb::ListOffersResponse { offers, next_page_token })
    }

    async fn withdraw_offer(
        &self,
        req: Request<pb::WithdrawOfferRequest>,
    ) -> Answer<pb::WithdrawOfferResponse> {
        Audit::of(&req).resource(&req.get_ref().offer_id);
        let req = req.into_inner();
        let id = required_id("offer_id", &req.offer_id)?;
        let mut uow = self.db.begin().await?;
        let mut offer = store::offer_to_change(&mut uow, &id).await?;
        if offer.withdraw(&req.etag, now_micros())? {
            store::save(&mut uow, &offer).await?;
            uow.record(&OfferEvent::OfferWithdrawn { offer_id: offer.id.clone() }).await?;
            uow.commit().await?;
            self.cache.changed();
        }
        reply(pb::WithdrawOfferResponse { offer: Some(offer.into()) })
    }

    async fn list_available_offers(
        &self,
        req: Request<pb::ListAvailableOffersRequest>,
    ) -> Answer<pb::ListAvailableOffersResponse> {
        let (grant, req) = Grant::split(req)?;
        let mut v = Violations::new();
        let customer_id = optional_id(&mut v, "customer_id", &req.customer_id);
        let product_id = optional_id(&mut v, "product_id", &req.product_id);
        v.finish()?;
        // None asks as an anonymous shopper; a customer id must be the caller's.
        if let Some(customer_id) = &customer_id {
            grant.check_owner(customer_id)?;
        }
        let (customer, product, now) = (customer_id.as_deref(), product_id.as_deref(), now_micros());
        let found = self
            .cache
            .get(customer, product, now, || async move {
                let offers = store::available(&self.db, customer, product, now, MAX_AVAILABLE).await?;
                let next = store::next_start(&self.db, customer, product, now).await?;
                let until = domain::available_until(&offers, next);
                Ok((offers, until))
            })
            .await;
        match found {
            Ok(offers) => reply(pb::ListAvailableOffersResponse {
                offers: offers.iter().cloned().map(Into::into).collect(),
                fallback: false,
            }),
            Err(err) => {
                // The data layer failed: answer with the default set, and
                // say so in the body, in a trailer and in the metrics.
                tracing::warn!(error = %err, "available offers: answering with the fallback set");
                metrics::counter!("agora_offers_fallback_total").increment(1);
                let offers = self.fallback.offers(product_id.as_deref());
                let mut response = Response::new(pb::ListAvailableOffersResponse {
                    offers: offers.into_iter().map(Into::into).collect(),
                    fallback: true,
                });
                let mut trailers = http::HeaderMap::new();
                trailers.insert("agora-fallback", http::HeaderValue::from_static("true"));
                response.extensions_mut().insert(ExtraTrailers(trailers));
                Ok(response)
            }
        }
    }
}
