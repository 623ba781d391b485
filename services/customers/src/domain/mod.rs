//! The customers' model and its rules: what a customer is, what makes a
//! name or an email valid, and how a customer changes. No tonic, prost or
//! sqlx here: the gRPC adapter and the store translate to and from these
//! types.

mod email;

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
    /// The etag clients send back to detect concurrent changes.
    pub fn etag(&self) -> String {
        etag_of(self.revision)
    }
}

pub fn etag_of(revision: i64) -> String {
    format!("r{revision}")
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

impl CustomerPatch {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The customer with the patch applied (revision and times untouched).
    pub fn apply(&self, customer: &Customer) -> Customer {
        let mut next = customer.clone();
        if let Some(v) = &self.given_name {
            next.given_name = v.clone();
        }
        if let Some(v) = &self.family_name {
            next.family_name = v.clone();
        }
        if let Some(v) = &self.email {
            next.email = v.clone();
        }
        next
    }
}

/// The caller's etag is not the customer's current one: someone else
/// changed the customer since the caller read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleEtag;

/// Checks an optional etag against the customer's current one.
pub fn check_etag(customer: &Customer, etag: &str) -> Result<(), StaleEtag> {
    if etag.is_empty() || etag == customer.etag() { Ok(()) } else { Err(StaleEtag) }
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

impl CustomerEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CustomerRegistered { .. } => "CustomerRegistered",
            Self::CustomerDeleted { .. } => "CustomerDeleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  Ana  "), Ok("Ana".into()));
        assert!(parse_name("   ").is_err());
        assert!(parse_name(&"x".repeat(101)).is_err());
        assert!(parse_name(&"é".repeat(100)).is_ok(), "counts characters, not bytes");
        assert!(parse_name("An\u{7}a").is_err());
    }

    #[test]
    fn an_etag_is_checked_only_when_given() {
        let c = customer();
        assert_eq!(check_etag(&c, ""), Ok(()));
        assert_eq!(check_etag(&c, "r3"), Ok(()));
        assert_eq!(check_etag(&c, "r2"), Err(StaleEtag));
    }

    #[test]
    fn a_patch_changes_only_its_fields() {
        let c = customer();
        let patch = CustomerPatch { family_name: Some("Souza".into()), ..Default::default() };
        let next = patch.apply(&c);
        assert_eq!(next.family_name, "Souza");
        assert_eq!(next.given_name, c.given_name);
        assert_eq!(next.email, c.email);
        assert!(CustomerPatch::default().is_empty());
    }

    #[test]
    fn a_customer_printed_for_debugging_shows_no_email() {
        let shown = format!("{:?}", customer());
        assert!(!shown.contains("ana@example.com"), "{shown}");
        assert!(shown.contains("cus_1"));
    }
}
