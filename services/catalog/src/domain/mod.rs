//! The catalog's model and its rules: what a family and a product are, what
//! makes their fields valid, and how a product changes. No tonic, prost or
//! sqlx here: the gRPC adapter and the store translate to and from these
//! types. A [`Product`] is an aggregate: its methods are the only way it
//! changes, and each checks the rules before it does.

mod currency;

use agora_platform::{Error, Precondition, outbox::DomainEvent};
pub use currency::is_known_currency;
use serde::{Deserialize, Serialize};

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Highest price in minor units (ten million in a two-decimal currency): a
/// larger one is a typo, not a product.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000;
/// Most ids in one BatchGetProducts.
pub const MAX_BATCH: usize = 100;

/// A group of products a shopper compares ("screens").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub create_time: i64,
}

/// The validated content of a family to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFamily {
    pub display_name: String,
    pub description: String,
}

/// A price: ISO 4217 currency and an amount in its minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub currency_code: String,
    pub amount_minor: i64,
}

impl Money {
    /// A price from its parts; each error names the part that is wrong.
    pub fn parse(currency_code: &str, amount_minor: i64) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if !is_known_currency(currency_code) {
            problems.push(("currency_code", format!("{currency_code:?} is not an ISO 4217 currency code")));
        }
        if amount_minor < 0 {
            problems.push(("amount_minor", "must not be negative".to_string()));
        } else if amount_minor > MAX_PRICE_MINOR {
            problems.push(("amount_minor", format!("must be at most {MAX_PRICE_MINOR}")));
        }
        if problems.is_empty() {
            Ok(Self { currency_code: currency_code.to_owned(), amount_minor })
        } else {
            Err(problems)
        }
    }
}

/// Where a product is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductState {
    Active,
    Discontinued,
}

impl ProductState {
    /// How it is stored (`ACTIVE`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub family_id: String,
    pub price: Money,
    pub state: ProductState,
    /// Counts the writes; the etag is derived from it.
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

impl Product {
    /// A new product, on sale, at its first revision.
    pub fn create(id: String, new: NewProduct, now: i64) -> (Self, CatalogEvent) {
        let product = Self {
            id,
            display_name: new.display_name,
            description: new.description,
            family_id: new.family_id,
            price: new.price,
            state: ProductState::Active,
            revision: 1,
            create_time: now,
            update_time: now,
        };
        let event = CatalogEvent::ProductCreated(product.clone());
        (product, event)
    }

    /// The etag clients send back to detect concurrent changes.
    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// Changes the fields of `patch`, if `etag` (when given) is current and
    /// the product is still on sale: a discontinued product is frozen.
    pub fn update(&mut self, patch: ProductPatch, etag: &str, now: i64) -> Result<CatalogEvent, Error> {
        self.check_etag(etag)?;
        if self.state == ProductState::Discontinued {
            return Err(Error::FailedPrecondition {
                kind: Precondition::State,
                subject: format!("product/{}", self.id),
                description: "the product is discontinued and can no longer change".into(),
            });
        }
        let ProductPatch { display_name, description, family_id, price } = patch;
        self.display_name = display_name.unwrap_or_else(|| self.display_name.clone());
        self.description = description.unwrap_or_else(|| self.description.clone());
        self.family_id = family_id.unwrap_or_else(|| self.family_id.clone());
        self.price = price.unwrap_or_else(|| self.price.clone());
        self.touch(now);
        Ok(CatalogEvent::ProductUpdated(self.clone()))
    }

    /// Takes the product off sale, if `etag` (when given) is current. A
    /// product already discontinued stays as it is: no event, no new etag.
    pub fn discontinue(&mut self, etag: &str, now: i64) -> Result<Option<CatalogEvent>, Error> {
        self.check_etag(etag)?;
        if self.state == ProductState::Discontinued {
            return Ok(None);
        }
        self.state = ProductState::Discontinued;
        self.touch(now);
        Ok(Some(CatalogEvent::ProductDiscontinued { product_id: self.id.clone() }))
    }

    /// An optional etag: empty means "whatever the product is now".
    fn check_etag(&self, etag: &str) -> Result<(), Error> {
        if etag.is_empty() || etag == self.etag() {
            Ok(())
        } else {
            Err(Error::stale_etag("product", &self.id))
        }
    }

    /// Records a write: a new revision (so a new etag), and an update time
    /// that never goes backwards, even if the clock does.
    fn touch(&mut self, now: i64) {
        self.revision += 1;
        self.update_time = now.max(self.update_time);
    }
}

/// The validated content of a product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub display_name: String,
    pub description: String,
    pub family_id: String,
    pub price: Money,
}

impl NewProduct {
    /// A stable rendering of the request, stored with its idempotency key: a
    /// retry must ask for exactly the same product.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.display_name,
            self.description,
            self.family_id,
            self.price.currency_code,
            self.price.amount_minor
        )
    }
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub family_id: Option<String>,
    pub price: Option<Money>,
}

/// What happened in the catalog, as told to other contexts through the
/// change feed. Stored as JSON in the outbox, in the transaction of the
/// change itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data")]
pub enum CatalogEvent {
    ProductCreated(Product),
    ProductUpdated(Product),
    ProductDiscontinued { product_id: String },
}

impl DomainEvent for CatalogEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::ProductCreated(_) => "ProductCreated",
            Self::ProductUpdated(_) => "ProductUpdated",
            Self::ProductDiscontinued { .. } => "ProductDiscontinued",
        }
    }

    fn key(&self) -> &str {
        match self {
            Self::ProductCreated(product) | Self::ProductUpdated(product) => &product.id,
            Self::ProductDiscontinued { product_id } => product_id,
        }
    }
}

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn parse_display_name(raw: &str) -> Result<String, String> {
    agora_platform::wire::parse_line(raw, MAX_NAME_CHARS)
}

/// A description: at most 2000 characters, surrounding blanks removed.
pub fn parse_description(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!("must be at most {MAX_DESCRIPTION_CHARS} characters"));
    }
    Ok(text.to_owned())
}

pub use agora_platform::wire::parse_id;

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimming, blanks and control characters are `parse_line`'s, tested
    /// in the platform; the bound is the catalog's.
    #[test]
    fn names_are_bounded() {
        assert!(parse_display_name(&"x".repeat(201)).is_err());
        assert!(parse_display_name(&"é".repeat(200)).is_ok(), "counts characters, not bytes");
    }

    fn product() -> Product {
        Product {
            id: "prd_1".into(),
            display_name: "Screen".into(),
            description: String::new(),
            family_id: "fam_1".into(),
            price: Money { currency_code: "EUR".into(), amount_minor: 19_900 },
            state: ProductState::Active,
            revision: 3,
            create_time: 1,
            update_time: 1,
        }
    }

    #[test]
    fn prices_need_a_real_currency_and_a_sane_amount() {
        assert!(Money::parse("EUR", 0).is_ok());
        assert_eq!(Money::parse("eur", 1).unwrap_err()[0].0, "currency_code");
        assert_eq!(Money::parse("XYZ", 1).unwrap_err()[0].0, "currency_code");
        assert_eq!(Money::parse("EUR", -1).unwrap_err()[0].0, "amount_minor");
        assert_eq!(Money::parse("EUR", MAX_PRICE_MINOR + 1).unwrap_err()[0].0, "amount_minor");
        assert_eq!(Money::parse("", -5).unwrap_err().len(), 2);
    }

    fn precondition(err: Error) -> Precondition {
        match err {
            Error::FailedPrecondition { kind, .. } => kind,
            other => panic!("not a failed precondition: {other:?}"),
        }
    }

    #[test]
    fn an_etag_is_checked_only_when_given() {
        for etag in ["", "r3"] {
            let mut p = product();
            assert!(p.update(ProductPatch::default(), etag, 5).is_ok(), "{etag:?}");
        }
        let mut p = product();
        assert_eq!(precondition(p.update(ProductPatch::default(), "r2", 5).unwrap_err()), Precondition::Etag);
        assert_eq!(precondition(p.discontinue("r2", 5).unwrap_err()), Precondition::Etag);
        assert_eq!(p, product(), "a refused change changes nothing");
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_makes_a_new_revision() {
        let mut p = product();
        let patch = ProductPatch { display_name: Some("Big screen".into()), ..Default::default() };
        let event = p.update(patch, "r3", 0).unwrap();
        assert_eq!(p.display_name, "Big screen");
        assert_eq!(p.price, product().price);
        assert_eq!((p.etag().as_str(), p.update_time), ("r4", 1), "the update time never goes back");
        assert_eq!(event, CatalogEvent::ProductUpdated(p));
    }

    #[test]
    fn a_discontinued_product_is_frozen_and_discontinuing_again_changes_nothing() {
        let mut p = product();
        let event = p.discontinue("", 9).unwrap();
        assert_eq!(event, Some(CatalogEvent::ProductDiscontinued { product_id: "prd_1".into() }));
        assert_eq!((p.state, p.revision, p.update_time), (ProductState::Discontinued, 4, 9));
        let before = p.clone();
        assert_eq!(p.discontinue("", 10).unwrap(), None);
        assert_eq!(p, before);
        let err = p.update(ProductPatch { price: None, ..Default::default() }, "", 11).unwrap_err();
        assert_eq!(precondition(err), Precondition::State);
    }
}
