//! The default offers "available offers" answers with when the offers
//! database fails, so a shop page can still show something. Configured as a
//! JSON list, inline (`AGORA_OFFERS_FALLBACK`) or in a file
//! (`AGORA_OFFERS_FALLBACK_FILE`); the built-in default is the empty list:
//! showing no offer is always true, showing a made-up one may not be.
//!
//! ```json
//! [{"offer_id": "fallback-1", "product_id": "prd_…", "kind": "SPEED", "discount_percent": 10}]
//! ```
//!
//! A fallback offer is for every customer and has no time window.

use serde::Deserialize;

use crate::domain::{self, Offer, OfferKind, OfferState, Window};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    offer_id: String,
    product_id: String,
    kind: String,
    discount_percent: i32,
}

/// The configured fallback offers.
#[derive(Debug, Clone, Default)]
pub struct Fallback {
    offers: Vec<Offer>,
}

impl Fallback {
    /// Parses the JSON list; every problem names the entry it is in.
    pub fn parse(json: &str) -> Result<Self, String> {
        let entries: Vec<Entry> =
            serde_json::from_str(json).map_err(|e| format!("not a list of offers: {e}"))?;
        let mut offers = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let kind =
                e.kind.parse::<OfferKind>().map_err(|_| format!("[{i}].kind: expected SPEED or LAST_DAY"))?;
            let discount_percent = domain::check_discount(e.discount_percent)
                .map_err(|d| format!("[{i}].discount_percent: {d}"))?;
            let product_id = domain::parse_id(&e.product_id).map_err(|d| format!("[{i}].product_id: {d}"))?;
            let id = domain::parse_id(&e.offer_id).map_err(|d| format!("[{i}].offer_id: {d}"))?;
            offers.push(Offer {
                id,
                product_id,
                customer_id: None,
                kind,
                discount_percent,
                window: Window { start: 0, end: 0 },
                state: OfferState::Active,
                revision: 0,
                create_time: 0,
                update_time: 0,
            });
        }
        Ok(Self { offers })
    }

    /// The fallback offers for a product (all of them without one).
    pub fn offers(&self, product_id: Option<&str>) -> Vec<Offer> {
        self.offers.iter().filter(|o| product_id.is_none_or(|p| o.product_id == p)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_list_parses_and_filters_by_product() {
        let f = Fallback::parse(
            r#"[{"offer_id": "f1", "product_id": "prd_a", "kind": "SPEED", "discount_percent": 10},
                {"offer_id": "f2", "product_id": "prd_b", "kind": "LAST_DAY", "discount_percent": 5}]"#,
        )
        .unwrap();
        assert_eq!(f.offers(None).len(), 2);
        assert_eq!(f.offers(Some("prd_b"))[0].id, "f2");
        assert!(Fallback::default().offers(None).is_empty());
    }

    #[test]
    fn a_bad_fallback_entry_is_named() {
        let err = Fallback::parse(
            r#"[{"offer_id": "f1", "product_id": "p", "kind": "SPEED", "discount_percent": 95}]"#,
        )
        .unwrap_err();
        assert!(err.starts_with("[0].discount_percent"), "{err}");
        assert!(Fallback::parse("{}").is_err());
    }
}
