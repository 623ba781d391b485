//! The catalog's model and its rules: what a family and a product are, what
//! makes their fields valid, and how a product changes. No tonic, prost or
//! sqlx here: the gRPC adapter and the store translate to and from these
//! types.

mod currency;

pub use currency::is_known_currency;
use serde::{Deserialize, Serialize};

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Highest price in minor units (ten million in a two-decimal currency): a
/// larger one is a typo, not a product.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000;
/// Longest idempotency key of CreateProduct.
pub const MAX_REQUEST_ID_CHARS: usize = 100;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductState {
    Active,
    Discontinued,
}

impl ProductState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Discontinued => "DISCONTINUED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(Self::Active),
            "DISCONTINUED" => Some(Self::Discontinued),
            _ => None,
        }
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
    /// The etag clients send back to detect concurrent changes.
    pub fn etag(&self) -> String {
        etag_of(self.revision)
    }
}

pub fn etag_of(revision: i64) -> String {
    format!("r{revision}")
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

impl ProductPatch {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The product with the patch applied (revision and times untouched).
    pub fn apply(&self, product: &Product) -> Product {
        let mut next = product.clone();
        if let Some(v) = &self.display_name {
            next.display_name = v.clone();
        }
        if let Some(v) = &self.description {
            next.description = v.clone();
        }
        if let Some(v) = &self.family_id {
            next.family_id = v.clone();
        }
        if let Some(v) = &self.price {
            next.price = v.clone();
        }
        next
    }
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

impl CatalogEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ProductCreated(_) => "ProductCreated",
            Self::ProductUpdated(_) => "ProductUpdated",
            Self::ProductDiscontinued { .. } => "ProductDiscontinued",
        }
    }
}

/// Why a write to a product is refused, beyond field validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's etag is not the current one.
    StaleEtag,
    /// Discontinued products are frozen.
    Discontinued,
}

/// Checks an optional etag against the product's current one.
pub fn check_etag(product: &Product, etag: &str) -> Result<(), Refusal> {
    if etag.is_empty() || etag == product.etag() { Ok(()) } else { Err(Refusal::StaleEtag) }
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

/// An idempotency key: empty (none) or up to 100 printable characters.
pub fn parse_request_id(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.chars().count() > MAX_REQUEST_ID_CHARS {
        return Err(format!("must be at most {MAX_REQUEST_ID_CHARS} characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(Some(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_display_name("  Screen  "), Ok("Screen".into()));
        assert!(parse_display_name("   ").is_err());
        assert!(parse_display_name(&"x".repeat(201)).is_err());
        assert!(parse_display_name(&"é".repeat(200)).is_ok(), "counts characters, not bytes");
        assert!(parse_display_name("a\u{0}b").is_err());
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

    #[test]
    fn an_etag_is_checked_only_when_given() {
        let p = product();
        assert_eq!(check_etag(&p, ""), Ok(()));
        assert_eq!(check_etag(&p, "r3"), Ok(()));
        assert_eq!(check_etag(&p, "r2"), Err(Refusal::StaleEtag));
    }

    #[test]
    fn a_patch_changes_only_its_fields() {
        let p = product();
        let patch = ProductPatch { display_name: Some("Big screen".into()), ..Default::default() };
        let next = patch.apply(&p);
        assert_eq!(next.display_name, "Big screen");
        assert_eq!(next.price, p.price);
        assert!(ProductPatch::default().is_empty());
    }
}
