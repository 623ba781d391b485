//! The offers context's model: timed offers on products, and what makes one
//! valid and available. No tonic, prost or sqlx here.
//!
//! "Family" in this context means the timed-offer family (SPEED and
//! LAST_DAY offers); it has nothing to do with the catalog's product
//! families. Products and customers are known by id only.

/// Smallest and largest discount, in percent.
pub const DISCOUNT_PERCENT: std::ops::RangeInclusive<i32> = 1..=90;
/// A LAST_DAY offer lasts one day at most: that is what the name promises.
pub const LAST_DAY_MAX_MICROS: i64 = 24 * 3600 * 1_000_000;
/// No offer runs longer than this; a longer one is a price, not an offer.
pub const MAX_DURATION_MICROS: i64 = 31 * 24 * 3600 * 1_000_000;
/// Most offers one ListAvailableOffers answers with.
pub const MAX_AVAILABLE: u32 = 500;

/// The members of the timed-offer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKind {
    /// A short, sharp discount.
    Speed,
    /// The last day a price holds.
    LastDay,
}

impl OfferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Speed => "SPEED",
            Self::LastDay => "LAST_DAY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SPEED" => Some(Self::Speed),
            "LAST_DAY" => Some(Self::LastDay),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferState {
    Active,
    Withdrawn,
}

impl OfferState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Withdrawn => "WITHDRAWN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(Self::Active),
            "WITHDRAWN" => Some(Self::Withdrawn),
            _ => None,
        }
    }
}

/// An offer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: String,
    pub product_id: String,
    /// None: an offer for every customer.
    pub customer_id: Option<String>,
    pub kind: OfferKind,
    pub discount_percent: i32,
    pub start_time: i64,
    pub end_time: i64,
    pub state: OfferState,
    pub revision: i64,
    pub create_time: i64,
}

impl Offer {
    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// Whether a shopper sees this offer at `now`.
    pub fn is_available(&self, customer_id: Option<&str>, now: i64) -> bool {
        self.state == OfferState::Active
            && self.start_time <= now
            && now < self.end_time
            && (self.customer_id.is_none() || self.customer_id.as_deref() == customer_id)
    }
}

/// The validated content of an offer to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOffer {
    pub product_id: String,
    pub customer_id: Option<String>,
    pub kind: OfferKind,
    pub discount_percent: i32,
    pub start_time: i64,
    pub end_time: i64,
}

impl NewOffer {
    /// A stable rendering stored with the idempotency key.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.product_id,
            self.customer_id.as_deref().unwrap_or(""),
            self.kind.as_str(),
            self.discount_percent,
            self.start_time,
            self.end_time
        )
    }
}

/// A discount within 1..=90 percent.
pub fn check_discount(percent: i32) -> Result<i32, String> {
    if DISCOUNT_PERCENT.contains(&percent) {
        Ok(percent)
    } else {
        Err(format!("must be between {} and {} percent", DISCOUNT_PERCENT.start(), DISCOUNT_PERCENT.end()))
    }
}

/// Which of the window's two ends is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowProblem {
    Start(String),
    End(String),
}

/// The time window rules of the timed-offer family: the window is not
/// empty, has not ended, and is not longer than its kind allows.
pub fn check_window(kind: OfferKind, start: i64, end: i64, now: i64) -> Result<(), WindowProblem> {
    if end <= start {
        return Err(WindowProblem::End("must be after start_time".into()));
    }
    if end <= now {
        return Err(WindowProblem::End("must be in the future".into()));
    }
    if end - start > MAX_DURATION_MICROS {
        return Err(WindowProblem::End("must be at most 31 days after start_time".into()));
    }
    if kind == OfferKind::LastDay && end - start > LAST_DAY_MAX_MICROS {
        return Err(WindowProblem::End("a LAST_DAY offer lasts at most 24 hours".into()));
    }
    Ok(())
}

pub use agora_platform::wire::parse_id;

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1_000_000;

    #[test]
    fn discounts_stay_within_1_and_90_percent() {
        assert!(check_discount(1).is_ok() && check_discount(90).is_ok());
        assert!(check_discount(0).is_err() && check_discount(91).is_err() && check_discount(-5).is_err());
    }

    #[test]
    fn windows_follow_the_rules_of_their_kind() {
        let now = 100 * HOUR;
        assert_eq!(check_window(OfferKind::Speed, now, now + HOUR, now), Ok(()));
        assert!(matches!(check_window(OfferKind::Speed, now, now, now), Err(WindowProblem::End(_))));
        assert!(matches!(
            check_window(OfferKind::Speed, now - 2 * HOUR, now - HOUR, now),
            Err(WindowProblem::End(_))
        ));
        assert!(check_window(OfferKind::LastDay, now, now + 24 * HOUR, now).is_ok());
        assert!(check_window(OfferKind::LastDay, now, now + 25 * HOUR, now).is_err());
        assert!(check_window(OfferKind::Speed, now, now + 32 * 24 * HOUR, now).is_err());
    }

    #[test]
    fn availability_needs_an_active_offer_in_its_window_for_this_customer() {
        let offer = Offer {
            id: "off_1".into(),
            product_id: "prd_1".into(),
            customer_id: Some("cus_1".into()),
            kind: OfferKind::Speed,
            discount_percent: 10,
            start_time: 10,
            end_time: 20,
            state: OfferState::Active,
            revision: 1,
            create_time: 1,
        };
        assert!(offer.is_available(Some("cus_1"), 10));
        assert!(!offer.is_available(Some("cus_2"), 10), "personal offers are personal");
        assert!(!offer.is_available(Some("cus_1"), 20), "the end is exclusive");
        let everyone = Offer { customer_id: None, ..offer.clone() };
        assert!(everyone.is_available(None, 15) && everyone.is_available(Some("cus_9"), 15));
        let withdrawn = Offer { state: OfferState::Withdrawn, ..offer };
        assert!(!withdrawn.is_available(Some("cus_1"), 15));
    }
}
