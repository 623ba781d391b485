//! Conversions at the gRPC edge shared by every service: timestamps, page
//! sizes and opaque page tokens.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// Microseconds since the Unix epoch: how every service stores time (an
/// integer compares and indexes the same in SQLite and PostgreSQL).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Microseconds of a wire timestamp; None when it is out of range.
pub fn micros_from_timestamp(ts: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds.checked_mul(1_000_000)?.checked_add(i64::from(ts.nanos / 1_000))
}

/// A new opaque id with a readable prefix (`prd_…`): time-ordered (UUIDv7),
/// so ids created together sort and index together.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A reference to an id, this context's or another's: not empty, at most
/// 100 bytes (the bound every Agora service puts on its ids).
pub fn parse_id(raw: &str) -> Result<String, String> {
    match raw.len() {
        0 => Err("is required".into()),
        1..=100 => Ok(raw.to_owned()),
        _ => Err("is too long to be an id".into()),
    }
}

/// One line of text a person typed (a name, a title): surrounding blanks
/// removed, 1 to `max_chars` characters (not bytes), no control characters.
pub fn parse_line(raw: &str, max_chars: usize) -> Result<String, String> {
    let line = raw.trim();
    if line.is_empty() {
        return Err("must not be empty".into());
    }
    if line.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if line.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(line.to_owned())
}

/// Default and largest page sizes of every List call.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The page size a List call uses: the default for 0, capped at the
/// maximum; negative is an error.
pub fn page_size(requested: i32) -> Result<u32, String> {
    match requested {
        n if n < 0 => Err("must not be negative".into()),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u32).min(MAX_PAGE_SIZE)),
    }
}

/// A keyset cursor: the position after which the next page starts, tied to
/// the filter that produced it so it cannot be replayed with another one.
/// Encoded as URL-safe base64 so clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub after: i64,
    pub filter: String,
}

impl PageToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1|{}|{}", self.after, self.filter))
    }

    /// The cursor of `token` (None for the first page). `filter` must be the
    /// filter of the current request.
    pub fn decode(token: &str, filter: &str) -> Result<Option<i64>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed = || "is not a token returned by this service".to_string();
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        let text = String::from_utf8(raw).map_err(|_| malformed())?;
        let mut parts = text.splitn(3, '|');
        let (Some("v1"), Some(after), Some(token_filter)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let after: i64 = after.parse().map_err(|_| malformed())?;
        if token_filter != filter {
            return Err("was issued for a different filter".into());
        }
        Ok(Some(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_micros() {
        for micros in [0, 1, 1_700_000_000_123_456, -1] {
            assert_eq!(micros_from_timestamp(&timestamp_from_micros(micros)), Some(micros));
        }
        assert_eq!(micros_from_timestamp(&prost_types::Timestamp { seconds: 1, nanos: -1 }), None);
    }

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let token = PageToken { after: 42, filter: "family=f1".into() }.encode();
        assert_eq!(PageToken::decode(&token, "family=f1"), Ok(Some(42)));
        assert!(PageToken::decode(&token, "family=f2").is_err());
        assert!(PageToken::decode("not-a-token", "").is_err());
        assert_eq!(PageToken::decode("", "x"), Ok(None));
    }

    #[test]
    fn page_sizes_are_defaulted_and_capped() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(5), Ok(5));
        assert_eq!(page_size(1_000_000), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }
}
