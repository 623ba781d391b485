//! The offers context's model: timed offers on products, and what makes one
//! valid and available. No tonic, prost or sqlx here. An [`Offer`] is an
//! aggregate: its methods are the only way it changes.
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

use agora_platform::Error;

/// The members of the timed-offer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum OfferKind {
    /// A short, sharp discount.
    Speed,
    /// The last day a price holds.
    LastDay,
}

impl OfferKind {
    /// How it is stored (`LAST_DAY`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum OfferState {
    Active,
    Withdrawn,
}

impl OfferState {
    /// How it is stored (`WITHDRAWN`).
    pub fn as_str(self) -> &'static str {
        self.into()
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
    pub window: Window,
    pub state: OfferState,
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

impl Offer {
    /// A new offer, active, at its first revision. `new` passed the rules
    /// of its kind's window ([`check_window`]) and discount at the edge.
    pub fn create(id: String, new: NewOffer, now: i64) -> Self {
        Self {
            id,
            product_id: new.product_id,
            customer_id: new.customer_id,
            kind: new.kind,
            discount_percent: new.discount_percent,
            window: new.window,
            state: OfferState::Active,
            revision: 1,
            create_time: now,
            update_time: now,
        }
    }

    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// Withdraws the offer, if `etag` (when given) is current; false when
    /// it was withdrawn already, which changes nothing.
    pub fn withdraw(&mut self, etag: &str, now: i64) -> Result<bool, Error> {
        if !etag.is_empty() && etag != self.etag() {
            return Err(Error::stale_etag("offer", &self.id));
        }
        if self.state == OfferState::Withdrawn {
            return Ok(false);
        }
        self.state = OfferState::Withdrawn;
        self.revision += 1;
        self.update_time = now.max(self.update_time);
        Ok(true)
    }

    /// Whether a shopper sees this offer at `now`. The store's indexed query
    /// for available offers says the same in SQL; a test holds the two to
    /// agreement on the same rows.
    pub fn is_available(&self, customer_id: Option<&str>, now: i64) -> bool {
        self.state == OfferState::Active
            && self.window.contains(now)
            && (self.customer_id.is_none() || self.customer_id.as_deref() == customer_id)
    }
}

/// Until when an answer of available offers holds, from the moment it was
/// read: until the first of them ends, or the first offer that was not
/// yet available starts (`next_start`), whichever comes first. Between,
/// no offer joins or leaves the answer, nor changes place in it, unless
/// offers are written.
pub fn available_until(available: &[Offer], next_start: Option<i64>) -> i64 {
    let first_end = available.iter().map(|o| o.window.end).min();
    first_end.into_iter().chain(next_start).min().unwrap_or(i64::MAX)
}

/// What changed among the offers, recorded in offers' own outbox in the
/// transaction of the change: how the replicas of offers learn that what
/// they keep of the available offers is stale. Not published to other
/// contexts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "data")]
pub enum OfferEvent {
    OfferCreated {
        offer_id: String,
        product_id: String,
    },
    OfferWithdrawn {
        offer_id: String,
    },
    /// Offers withdrawn together by an upstream's event.
    OffersWithdrawn {
        count: u64,
    },
}

impl agora_platform::outbox::DomainEvent for OfferEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::OfferCreated { .. } => "OfferCreated",
            Self::OfferWithdrawn { .. } => "OfferWithdrawn",
            Self::OffersWithdrawn { .. } => "OffersWithdrawn",
        }
    }

    /// The offer; none for offers withdrawn together. Offers' events stay
    /// in offers (its caches) and are never relayed.
    fn key(&self) -> &str {
        match self {
            Self::OfferCreated { offer_id, .. } | Self::OfferWithdrawn { offer_id } => offer_id,
            Self::OffersWithdrawn { .. } => "",
        }
    }
}

/// The validated content of an offer to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOffer {
    pub product_id: String,
    pub customer_id: Option<String>,
    pub kind: OfferKind,
    pub discount_percent: i32,
    pub window: Window,
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
            self.window.start,
            self.window.end
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

/// When an offer runs: from `start`, included, to `end`, excluded
/// (microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// A window of an offer of `kind`, made at `now`, if it follows the
    /// rules of its kind ([`check_window`]).
    pub fn new(kind: OfferKind, start: i64, end: i64, now: i64) -> Result<Self, WindowProblem> {
        check_window(kind, start, end, now).map(|()| Self { start, end })
    }

    /// Whether `now` is inside the window.
    pub fn contains(&self, now: i64) -> bool {
        self.start <= now && now < self.end
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

    #[test]
    fn an_answer_holds_until_its_first_offer_ends_or_a_waiting_one_starts() {
        let offer = |end| {
            Offer::create(
                "off".into(),
                NewOffer {
                    product_id: "prd".into(),
                    customer_id: None,
                    kind: OfferKind::Speed,
                    discount_percent: 10,
                    window: Window { start: 0, end },
                },
                0,
            )
        };
        assert_eq!(available_until(&[offer(50), offer(30)], None), 30);
        assert_eq!(available_until(&[offer(50)], Some(20)), 20);
        assert_eq!(available_until(&[offer(50)], Some(70)), 50);
        assert_eq!(available_until(&[], Some(70)), 70);
        assert_eq!(available_until(&[], None), i64::MAX);
    }
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
            window: Window { start: 10, end: 20 },
            state: OfferState::Active,
            revision: 1,
            create_time: 1,
            update_time: 1,
        };
        assert!(offer.is_available(Some("cus_1"), 10));
        assert!(!offer.is_available(Some("cus_2"), 10), "personal offers are personal");
        assert!(!offer.is_available(Some("cus_1"), 20), "the end is exclusive");
        let everyone = Offer { customer_id: None, ..offer.clone() };
        assert!(everyone.is_available(None, 15) && everyone.is_available(Some("cus_9"), 15));
        let mut withdrawn = offer.clone();
        assert!(withdrawn.withdraw("", 15).unwrap());
        assert!(!withdrawn.is_available(Some("cus_1"), 15));
    }

    #[test]
    fn withdrawing_checks_the_etag_and_is_harmless_to_repeat() {
        let new = NewOffer {
            product_id: "prd_1".into(),
            customer_id: None,
            kind: OfferKind::Speed,
            discount_percent: 10,
            window: Window { start: 10, end: 20 },
        };
        let mut offer = Offer::create("off_1".into(), new, 5);
        assert!(matches!(offer.withdraw("r9", 6), Err(Error::FailedPrecondition { .. })));
        assert_eq!(offer.state, OfferState::Active, "a refused withdrawal changes nothing");
        assert!(offer.withdraw("r1", 6).unwrap());
        assert_eq!((offer.state, offer.etag().as_str(), offer.update_time), (OfferState::Withdrawn, "r2", 6));
        assert!(!offer.withdraw("", 7).unwrap());
        assert_eq!(offer.etag(), "r2", "withdrawing again changes nothing");
    }
}
