//! A customer's email address: checked once at the edge, then carried as a
//! type that cannot print itself into a log by accident.

use std::fmt;

/// Longest address, in characters (the limit of a forward path in RFC 5321).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest part before the '@', in characters (RFC 5321).
pub const MAX_LOCAL_PART_CHARS: usize = 64;

/// An email address as the customer wrote it, surrounding blanks removed.
///
/// Personal data. `Debug` prints a placeholder and there is no `Display`,
/// so a customer traced by mistake (`?customer`) shows no address; the text
/// is reached only through [`Email::as_str`], which the store and the wire
/// conversion call on purpose. The problems [`Email::parse`] reports never
/// repeat the value either: they end up in answers and in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// A valid address: at most 254 characters, exactly one '@', 1 to 64
    /// characters before it, a domain of dot-separated labels after it (at
    /// least two, none empty), no whitespace or control characters.
    ///
    /// Deliberately simpler than RFC 5322: quoted local parts and address
    /// literals are legal there but not what a shop's customers type, and
    /// the only real proof of an address is a message that arrives.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("is required".into());
        }
        if email.chars().count() > MAX_EMAIL_CHARS {
            return Err(format!("must be at most {MAX_EMAIL_CHARS} characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace or control characters".into());
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err("must contain one '@'".into());
        };
        if domain.contains('@') {
            return Err("must contain exactly one '@'".into());
        }
        if local.is_empty() || local.chars().count() > MAX_LOCAL_PART_CHARS {
            return Err(format!("must have 1 to {MAX_LOCAL_PART_CHARS} characters before the '@'"));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err("must have a domain after the '@' with at least one dot, such as example.com".into());
        }
        Ok(Self(email.to_owned()))
    }

    /// An address that passed [`Email::parse`] when it was written, read
    /// back from the store. Not checked again: tightening the rules later
    /// must not make existing customers unreadable.
    pub(crate) fn trusted(stored: String) -> Self {
        Self(stored)
    }

    /// The address itself, for the store and the wire only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is decided on. Lower-cased: in practice every
    /// mail system treats `Ana@Example.com` and `ana@example.com` as one
    /// mailbox, so they are one customer.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_are_accepted_and_trimmed() {
        let email = Email::parse("  Ana.Lima+shop@Mail.Example.com ").unwrap();
        assert_eq!(email.as_str(), "Ana.Lima+shop@Mail.Example.com");
        assert_eq!(email.key(), "ana.lima+shop@mail.example.com");
        assert!(Email::parse("a@b.co").is_ok());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for raw in [
            "",
            "   ",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "ana@@example.com",
            "ana@x@example.com",
            "ana lima@example.com",
            "ana@exa\tmple.com",
            "ana\u{0}@example.com",
            "ana@.example.com",
            "ana@example.com.",
            "ana@example..com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} was accepted");
        }
    }

    #[test]
    fn lengths_are_bounded_in_characters() {
        let local = "l".repeat(MAX_LOCAL_PART_CHARS);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        assert!(Email::parse(&format!("{local}l@example.com")).is_err());
        let domain = format!("{}.com", "d".repeat(MAX_EMAIL_CHARS - 6));
        assert_eq!(format!("a@{domain}").chars().count(), MAX_EMAIL_CHARS);
        assert!(Email::parse(&format!("a@{domain}")).is_ok());
        assert!(Email::parse(&format!("ab@{domain}")).is_err());
        assert!(
            Email::parse(&format!("{}@example.com", "é".repeat(MAX_LOCAL_PART_CHARS))).is_ok(),
            "counts characters, not bytes"
        );
    }

    #[test]
    fn neither_debug_nor_a_refusal_shows_the_address() {
        let email = Email::parse("secret.person@example.com").unwrap();
        assert!(!format!("{email:?}").contains("secret"));
        for raw in ["secret.person@", "secret person@example.com", "secret@x@y.z"] {
            let problem = Email::parse(raw).unwrap_err();
            assert!(!problem.contains("secret"), "{problem}");
        }
    }
}
