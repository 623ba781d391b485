//! The customers' model and its rules: what a customer is, what makes a
//! name or an email valid, and how a customer changes. No tonic, prost or
//! sqlx here: the gRPC adapter and the store translate to and from these
//! types. A [`Customer`] is an aggregate: its methods are the only way it
//! changes, and each checks the rules before it does.

mod email;

use agora_platform::{Error, outbox::DomainEvent};

pub use email::{Email, MAX_EMAIL_CHARS, MAX_LOCAL_PART_CHARS};

/// Longest given or family name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A person who shops, as stored.
///
/// `Debug` shows the names but not the email (see [`Email`]); handlers log
/// the id only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub given_name: String,
    pub family_name: String,
    pub email: Email,
    /// Counts the writes; the etag is derived from it.
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

impl Customer {
    /// A new customer, at their first revision.
    pub fn register(id: String, new: NewCustomer, now: i64) -> (Self, CustomerEvent) {
        let customer = Self {
            id,
            given_name: new.given_name,
            family_name: new.family_name,
            email: new.email,
            revision: 1,
            create_time: now,
            update_time: now,
        };
        let event = CustomerEvent::CustomerRegistered { customer_id: customer.id.clone() };
        (customer, event)
    }

    /// The etag clients send back to detect concurrent changes.
    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// Changes the fields of `patch`, if `etag` (when given) is current.
    pub fn update(&mut self, patch: CustomerPatch, etag: &str, now: i64) -> Result<(), Error> {
        self.check_etag(etag)?;
        let CustomerPatch { given_name, family_name, email } = patch;
        self.given_name = given_name.unwrap_or_else(|| self.given_name.clone());
        self.family_name = family_name.unwrap_or_else(|| self.family_name.clone());
        self.email = email.unwrap_or_else(|| self.email.clone());
        self.revision += 1;
        self.update_time = now.max(self.update_time);
        Ok(())
    }

    /// Deletes the customer for good, if `etag` (when given) is current.
    pub fn delete(&self, etag: &str) -> Result<CustomerEvent, Error> {
        self.check_etag(etag)?;
        Ok(CustomerEvent::CustomerDeleted { customer_id: self.id.clone() })
    }

    /// An optional etag: empty means "whatever the customer is now".
    fn check_etag(&self, etag: &str) -> Result<(), Error> {
        if etag.is_empty() || etag == self.etag() {
            Ok(())
        } else {
            Err(Error::stale_etag("customer", &self.id))
        }
    }
}

/// The validated content of a customer to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    pub given_name: String,
    pub family_name: String,
    pub email: Email,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerPatch {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub email: Option<Email>,
}

/// A given or family name: trimmed, 1 to 100 characters, no control
/// characters. Written as the customer writes it: no case folding, no
/// assumption about scripts or the number of words.
pub fn parse_name(raw: &str) -> Result<String, String> {
    agora_platform::wire::parse_line(raw, MAX_NAME_CHARS)
}

pub use agora_platform::wire::parse_id;

/// What happened to customers, as told to other contexts through the change
/// feed. Ids only: names and emails are personal data and stay here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind")]
pub enum CustomerEvent {
    CustomerRegistered { customer_id: String },
    CustomerDeleted { customer_id: String },
}

impl DomainEvent for CustomerEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::CustomerRegistered { .. } => "CustomerRegistered",
            Self::CustomerDeleted { .. } => "CustomerDeleted",
        }
    }

    fn key(&self) -> &str {
        match self {
            Self::CustomerRegistered { customer_id } | Self::CustomerDeleted { customer_id } => customer_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimming, blanks and control characters are `parse_line`'s, tested
    /// in the platform; the bound is the customers'.
    #[test]
    fn names_are_bounded() {
        assert!(parse_name(&"x".repeat(101)).is_err());
        assert!(parse_name(&"é".repeat(100)).is_ok(), "counts characters, not bytes");
    }

    fn customer() -> Customer {
        Customer {
            id: "cus_1".into(),
            given_name: "Ana".into(),
            family_name: "Lima".into(),
            email: Email::parse("ana@example.com").unwrap(),
            revision: 3,
            create_time: 1,
            update_time: 1,
        }
    }

    fn is_stale(result: Result<impl std::fmt::Debug, Error>) -> bool {
        matches!(result, Err(Error::FailedPrecondition { kind: agora_platform::Precondition::Etag, .. }))
    }

    #[test]
    fn an_etag_is_checked_only_when_given() {
        for etag in ["", "r3"] {
            assert!(customer().update(CustomerPatch::default(), etag, 5).is_ok(), "{etag:?}");
            assert!(customer().delete(etag).is_ok(), "{etag:?}");
        }
        let mut c = customer();
        assert!(is_stale(c.update(CustomerPatch::default(), "r2", 5)));
        assert!(is_stale(c.delete("r2")));
        assert_eq!(c, customer(), "a refused change changes nothing");
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_makes_a_new_revision() {
        let mut c = customer();
        let patch = CustomerPatch { family_name: Some("Souza".into()), ..Default::default() };
        c.update(patch, "", 0).unwrap();
        assert_eq!(c.family_name, "Souza");
        assert_eq!(c.given_name, customer().given_name);
        assert_eq!(c.email, customer().email);
        assert_eq!((c.etag().as_str(), c.update_time), ("r4", 1), "the update time never goes back");
    }

    #[test]
    fn registering_and_deleting_tell_the_feed() {
        let new =
            NewCustomer { given_name: "Ana".into(), family_name: "Lima".into(), email: customer().email };
        let (c, registered) = Customer::register("cus_2".into(), new, 7);
        assert_eq!((c.revision, c.create_time, c.update_time), (1, 7, 7));
        assert_eq!(registered, CustomerEvent::CustomerRegistered { customer_id: "cus_2".into() });
        assert_eq!(c.delete("r1").unwrap(), CustomerEvent::CustomerDeleted { customer_id: "cus_2".into() });
    }

    #[test]
    fn a_customer_printed_for_debugging_shows_no_email() {
        let shown = format!("{:?}", customer());
        assert!(!shown.contains("ana@example.com"), "{shown}");
        assert!(shown.contains("cus_1"));
    }
}
