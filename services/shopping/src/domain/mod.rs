//! The shopping context's model: a customer's shopping lists and the rules
//! of their items. No tonic, prost or sqlx here: the gRPC adapter and the
//! store translate to and from these types.
//!
//! Customers and products are known by id only. Whether a customer exists
//! or a product is on sale is asked of their owners (see `upstream`); a
//! product's name and price are the catalog's to tell, never a list's.
//!
//! A [`ShoppingList`] is an aggregate: its public methods are the only way
//! it changes, and each checks the rules before it does.

use agora_platform::{Error, Precondition};

/// Longest list title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// How many of one product a list may hold: per AddItem and in total.
pub const QUANTITY: std::ops::RangeInclusive<i32> = 1..=1000;
/// Most products one list holds: a list, with every item, always fits in
/// one answer (about 80 bytes an item, under 64 KiB in all).
pub const MAX_ITEMS: usize = 500;

/// One product on a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub product_id: String,
    pub quantity: i32,
    /// False once the catalog discontinued the product. The item stays, so
    /// the customer still sees what they had planned.
    pub available: bool,
}

/// A customer's list of products to buy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShoppingList {
    pub id: String,
    /// The owner, fixed at creation.
    pub customer_id: String,
    pub title: String,
    /// In the order the products were first added; each product at most once.
    pub items: Vec<Item>,
    /// Counts the writes; the etag is made of it.
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

/// The validated content of a list to create: it starts empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewList {
    pub customer_id: String,
    pub title: String,
}

/// Why a change to a list is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's etag is not the current one: someone else changed the
    /// list since the caller read it.
    StaleEtag,
    /// The product's quantity would pass the most one list may hold.
    TooMany { product_id: String, total: i32 },
    /// A new product on a list that holds [`MAX_ITEMS`] already.
    Full,
}

/// What adding a product changed, for the store to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addition {
    /// The product is new on the list: it goes last.
    NewItem,
    /// The product was on the list already: this is its new quantity.
    MoreOf { total: i32 },
}

impl ShoppingList {
    /// A new, empty list at its first revision.
    pub fn create(id: String, new: NewList, now: i64) -> Self {
        Self {
            id,
            customer_id: new.customer_id,
            title: new.title,
            items: Vec::new(),
            revision: 1,
            create_time: now,
            update_time: now,
        }
    }

    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// Adds `quantity` of a product, if `etag` (when given) is current (see
    /// [`Self::add`]). Whether the product may go on a list is the
    /// catalog's to say, asked before.
    pub fn add_item(
        &mut self,
        product_id: &str,
        quantity: i32,
        etag: &str,
        now: i64,
    ) -> Result<Addition, Error> {
        self.check_etag(etag).map_err(|r| self.refused(r))?;
        let addition = self.add(product_id, quantity).map_err(|r| self.refused(r))?;
        self.touch(now);
        Ok(addition)
    }

    /// Takes a product off the list, if `etag` (when given) is current; false
    /// when it was not on it, which leaves the list as it is, etag included.
    pub fn remove_item(&mut self, product_id: &str, etag: &str, now: i64) -> Result<bool, Error> {
        self.check_etag(etag).map_err(|r| self.refused(r))?;
        let removed = self.remove(product_id);
        if removed {
            self.touch(now);
        }
        Ok(removed)
    }

    /// Allows the list's deletion, if `etag` (when given) is current.
    pub fn delete(&self, etag: &str) -> Result<(), Error> {
        self.check_etag(etag).map_err(|r| self.refused(r))
    }

    /// A refusal as the caller sees it.
    fn refused(&self, refusal: Refusal) -> Error {
        match refusal {
            Refusal::StaleEtag => Error::stale_etag("shopping_list", &self.id),
            Refusal::Full => Error::FailedPrecondition {
                kind: Precondition::Quantity,
                subject: format!("shopping_list/{}", self.id),
                description: format!("the list holds {MAX_ITEMS} products, its most; remove one first"),
            },
            Refusal::TooMany { product_id, total } => Error::FailedPrecondition {
                kind: Precondition::Quantity,
                subject: format!("shopping_list/{}/product/{product_id}", self.id),
                description: format!(
                    "the list would hold {total} of product {product_id}; a list holds at most {} of a product",
                    QUANTITY.end()
                ),
            },
        }
    }

    /// Checks an optional etag: empty means "whatever the list is now".
    fn check_etag(&self, etag: &str) -> Result<(), Refusal> {
        if etag.is_empty() || etag == self.etag() { Ok(()) } else { Err(Refusal::StaleEtag) }
    }

    /// Adds `quantity` of a product: a new item at the end, or more of one
    /// already on the list, which keeps its place. The list is unchanged
    /// when the total would pass the maximum.
    fn add(&mut self, product_id: &str, quantity: i32) -> Result<Addition, Refusal> {
        let full = self.items.len() >= MAX_ITEMS;
        match self.items.iter_mut().find(|item| item.product_id == product_id) {
            Some(item) => {
                // Both terms are at most 1000: the sum cannot overflow.
                let total = item.quantity + quantity;
                if total > *QUANTITY.end() {
                    return Err(Refusal::TooMany { product_id: product_id.to_owned(), total });
                }
                item.quantity = total;
                Ok(Addition::MoreOf { total })
            }
            None if full => Err(Refusal::Full),
            None => {
                self.items.push(Item { product_id: product_id.to_owned(), quantity, available: true });
                Ok(Addition::NewItem)
            }
        }
    }

    /// Takes a product off the list; false when it was not on it.
    fn remove(&mut self, product_id: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|item| item.product_id != product_id);
        self.items.len() != before
    }

    /// Records a write: a new revision (so a new etag), and an update time
    /// that never goes backwards, even if the clock does.
    fn touch(&mut self, now: i64) {
        self.revision += 1;
        self.update_time = now.max(self.update_time);
    }
}

/// A title: trimmed, 1 to 200 characters, no control characters.
pub fn parse_title(raw: &str) -> Result<String, String> {
    agora_platform::wire::parse_line(raw, MAX_TITLE_CHARS)
}

/// A quantity to add: 1 to 1000.
pub fn parse_quantity(quantity: i32) -> Result<i32, String> {
    if QUANTITY.contains(&quantity) {
        Ok(quantity)
    } else {
        Err(format!("must be between {} and {}", QUANTITY.start(), QUANTITY.end()))
    }
}

pub use agora_platform::wire::parse_id;

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ShoppingList {
        ShoppingList {
            id: "lst_1".into(),
            customer_id: "cus_1".into(),
            title: "Groceries".into(),
            items: Vec::new(),
            revision: 1,
            create_time: 10,
            update_time: 10,
        }
    }

    fn products(list: &ShoppingList) -> Vec<(&str, i32)> {
        list.items.iter().map(|i| (i.product_id.as_str(), i.quantity)).collect()
    }

    #[test]
    fn a_product_added_again_keeps_its_place_and_sums_its_quantity() {
        let mut l = list();
        assert_eq!(l.add("prd_a", 2), Ok(Addition::NewItem));
        assert_eq!(l.add("prd_b", 1), Ok(Addition::NewItem));
        assert_eq!(l.add("prd_a", 3), Ok(Addition::MoreOf { total: 5 }));
        assert_eq!(products(&l), [("prd_a", 5), ("prd_b", 1)]);
        assert!(l.items.iter().all(|i| i.available));
    }

    #[test]
    fn the_total_of_a_product_stops_at_1000() {
        let mut l = list();
        l.add("prd_a", 1000).unwrap();
        let before = l.clone();
        assert_eq!(l.add("prd_a", 1), Err(Refusal::TooMany { product_id: "prd_a".into(), total: 1001 }));
        assert_eq!(l, before, "a refused addition changes nothing");
    }

    #[test]
    fn a_list_holds_at_most_500_products() {
        let mut l = list();
        for i in 0..MAX_ITEMS {
            l.add(&format!("prd_{i}"), 1).unwrap();
        }
        let before = l.clone();
        assert_eq!(l.add("prd_more", 1), Err(Refusal::Full));
        assert_eq!(l, before, "a refused addition changes nothing");
        assert_eq!(
            l.add("prd_0", 1),
            Ok(Addition::MoreOf { total: 2 }),
            "more of a product on it still fits"
        );
    }

    #[test]
    fn removing_an_absent_product_changes_nothing() {
        let mut l = list();
        l.add("prd_a", 1).unwrap();
        assert!(!l.remove("prd_b"));
        assert!(l.remove("prd_a"));
        assert!(l.items.is_empty());
    }

    #[test]
    fn an_etag_is_checked_only_when_given() {
        let l = list();
        assert_eq!(l.check_etag(""), Ok(()));
        assert_eq!(l.check_etag("r1"), Ok(()));
        assert_eq!(l.check_etag("r0"), Err(Refusal::StaleEtag));
    }

    #[test]
    fn a_write_bumps_the_revision_and_never_moves_time_back() {
        let mut l = list();
        l.touch(5);
        assert_eq!((l.etag().as_str(), l.update_time), ("r2", 10));
        l.touch(20);
        assert_eq!((l.revision, l.update_time), (3, 20));
    }

    #[test]
    fn a_refused_change_is_answered_as_a_failed_precondition_and_changes_nothing() {
        let mut l = list();
        l.add_item("prd_a", 1000, "r1", 20).unwrap();
        assert_eq!(l.etag(), "r2");
        let before = l.clone();
        let kind = |err| match err {
            Error::FailedPrecondition { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(l.add_item("prd_a", 1, "", 30).unwrap_err()), Precondition::Quantity);
        assert_eq!(kind(l.add_item("prd_b", 1, "r1", 30).unwrap_err()), Precondition::Etag);
        assert_eq!(kind(l.remove_item("prd_a", "r1", 30).unwrap_err()), Precondition::Etag);
        assert_eq!(kind(l.delete("r1").unwrap_err()), Precondition::Etag);
        assert_eq!(l, before);
        assert!(!l.remove_item("prd_b", "", 30).unwrap());
        assert_eq!(l, before, "removing an absent product changes nothing, etag included");
    }

    #[test]
    fn titles_are_trimmed_and_bounded_in_characters() {
        assert_eq!(parse_title("  Groceries "), Ok("Groceries".into()));
        assert!(parse_title(" ").is_err());
        assert!(parse_title("Gro\nceries").is_err());
        assert!(parse_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok());
        assert!(parse_title(&"é".repeat(MAX_TITLE_CHARS + 1)).is_err());
    }

    #[test]
    fn quantities_run_from_1_to_1000() {
        assert!(parse_quantity(1).is_ok() && parse_quantity(1000).is_ok());
        assert!(parse_quantity(0).is_err() && parse_quantity(1001).is_err() && parse_quantity(-1).is_err());
    }
}
