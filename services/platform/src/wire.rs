//! Conversions at the gRPC edge shared by every service: timestamps, ids,
//! idempotency keys, page sizes and opaque page tokens. A handler reads its
//! request's common fields with these, so that what is left in it is the
//! business operation.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::db::now_micros;
use crate::{Error, Violations, db::Page};

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

/// What a handler answers: `tonic`'s result of a call.
pub type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// A handler's successful answer.
pub fn reply<T>(message: T) -> Answer<T> {
    Ok(tonic::Response::new(message))
}

/// A required id field of a request: INVALID_ARGUMENT naming `field`.
pub fn required_id(field: &str, raw: &str) -> Result<String, Error> {
    parse_id(raw).map_err(|description| Error::invalid(field, description))
}

/// An id field that may be empty (None); its problem is collected in `v`.
pub fn optional_id(v: &mut Violations, field: &str, raw: &str) -> Option<String> {
    if raw.is_empty() { None } else { v.check(field, parse_id(raw)) }
}

/// The fields an update changes (AIP-134): the paths of `mask`, or, with
/// no mask (or an empty one), every field of `set` that the request set.
pub fn update_paths(mask: Option<prost_types::FieldMask>, set: &[(bool, &str)]) -> Vec<String> {
    match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths,
        _ => set.iter().filter(|(is_set, _)| *is_set).map(|(_, path)| (*path).to_owned()).collect(),
    }
}

/// A field a request must carry (a message field is optional on the wire):
/// INVALID_ARGUMENT naming `field` when it is missing.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}

/// Longest idempotency key (`request_id`) of a create call.
pub const MAX_REQUEST_ID_CHARS: usize = 100;

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

/// The bytes of items one answer carries at most (a List page, a message
/// of a stream): half the message size limit, so the rest of the message
/// always fits. Set once at start-up from `AGORA_MAX_MESSAGE_BYTES`; a
/// process-wide value because handlers build their answers without the
/// settings at hand.
static ANSWER_BYTES: AtomicUsize = AtomicUsize::new(2 << 20);

/// See [`ANSWER_BYTES`].
pub fn answer_bytes() -> usize {
    ANSWER_BYTES.load(Ordering::Relaxed)
}

/// Sets [`answer_bytes`] from the message size limit.
pub fn set_max_message_bytes(max_message_bytes: usize) {
    ANSWER_BYTES.store(max_message_bytes / 2, Ordering::Relaxed);
}

/// The most bytes of items in one message of a stream: small, because
/// HTTP/2 takes a whole message at once, so a reader that stops reading
/// leaves at most one message (and the send buffer) in the server's memory.
pub const STREAM_MESSAGE_BYTES: usize = 32 << 10;

/// Counts `item` into `bytes` (with its tag and length prefix) if it fits
/// in `budget`; the first item of an answer always does (the write limits
/// keep any one item far below the size limit).
fn fits(bytes: &mut usize, item: &impl prost::Message, first: bool, budget: usize) -> bool {
    let len = item.encoded_len();
    let framed = len + 1 + prost::encoding::encoded_len_varint(len as u64);
    if !first && *bytes + framed > budget {
        return false;
    }
    *bytes += framed;
    true
}

/// `items` in consecutive runs of at most [`STREAM_MESSAGE_BYTES`] (and
/// [`answer_bytes`]) each: the messages of a stream.
pub fn chunks_by_bytes<U: prost::Message>(items: Vec<U>) -> Vec<Vec<U>> {
    let budget = answer_bytes().min(STREAM_MESSAGE_BYTES);
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        if !fits(&mut bytes, &item, chunk.is_empty(), budget) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
            fits(&mut bytes, &item, true, budget);
        }
        chunk.push(item);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
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

/// The page a List call asks for: its size, and where it starts, read
/// from `page_size` and `page_token`. The token is bound to the call's
/// filter: one issued for another filter (or another list) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    pub size: u32,
    /// The `seq` after which the page starts; None for the first page.
    pub after: Option<i64>,
    filter: String,
}

impl Paging {
    /// Reads the two fields; problems are collected in `v`.
    pub fn read(v: &mut Violations, page_size: i32, page_token: &str, filter: impl Into<String>) -> Self {
        Self::size(v, page_size).token(v, page_token, filter)
    }

    /// Reads the two fields of a List call that has nothing else to check.
    pub fn of(page_size: i32, page_token: &str, filter: impl Into<String>) -> Result<Self, Error> {
        let mut v = Violations::new();
        let paging = Self::read(&mut v, page_size, page_token, filter);
        v.finish().map(|()| paging)
    }

    /// Reads `page_size` alone, for a call that reads its filter before the
    /// token it binds: the problems are then reported in the order of the
    /// fields (`page_size`, the filter's, `page_token`).
    pub fn size(v: &mut Violations, page_size: i32) -> PageSize {
        PageSize(v.check("page_size", self::page_size(page_size)).unwrap_or(DEFAULT_PAGE_SIZE))
    }

    /// The `next_page_token` that continues after `page`: empty on the last.
    pub fn next_page_token<T>(&self, page: &Page<T>) -> String {
        self.token_after(page.next_after)
    }

    fn token_after(&self, after: Option<i64>) -> String {
        after.map(|after| PageToken { after, filter: self.filter.clone() }.encode()).unwrap_or_default()
    }

    /// A List answer's two parts: `page`'s items in their wire form, and the
    /// `next_page_token` that continues after it. The answer holds at most
    /// [`answer_bytes`] of items: a page whose rows are larger ends early,
    /// and its token continues after the last item it holds.
    pub fn answer<T, U: From<T> + prost::Message>(&self, page: Page<T>) -> (Vec<U>, String) {
        let Page { items, mut next_after, seqs } = page;
        let total = items.len();
        let mut kept = Vec::with_capacity(total);
        let mut bytes = 0;
        for (seq, item) in seqs.iter().zip(items) {
            let item = U::from(item);
            if !fits(&mut bytes, &item, kept.is_empty(), answer_bytes()) {
                break;
            }
            kept.push((*seq, item));
        }
        if kept.len() < total {
            next_after = kept.last().map(|(seq, _)| *seq);
        }
        let next_page_token = self.token_after(next_after);
        (kept.into_iter().map(|(_, item)| item).collect(), next_page_token)
    }
}

/// A page size read before the filter; see [`Paging::size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// Reads `page_token`, which must have been issued for `filter`.
    pub fn token(self, v: &mut Violations, page_token: &str, filter: impl Into<String>) -> Paging {
        let filter = filter.into();
        let after = v.check("page_token", PageToken::decode(page_token, &filter)).flatten();
        Paging { size: self.0, after, filter }
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
    fn lines_are_trimmed_bounded_in_characters_and_printable() {
        assert_eq!(parse_line("  Ana  ", 10), Ok("Ana".into()));
        assert!(parse_line("   ", 10).is_err());
        assert!(parse_line(&"x".repeat(11), 10).is_err());
        assert!(parse_line(&"é".repeat(10), 10).is_ok(), "counts characters, not bytes");
        assert!(parse_line("a\u{0}b", 10).is_err());
        assert!(parse_line("An\u{7}a", 10).is_err());
    }

    #[test]
    fn timestamps_round_trip_through_micros() {
        for micros in [0, 1, 1_700_000_000_123_456, -1] {
            assert_eq!(micros_from_timestamp(&timestamp_from_micros(micros)), Some(micros));
        }
        assert_eq!(micros_from_timestamp(&prost_types::Timestamp { seconds: 1, nanos: -1 }), None);
    }

    /// Rows larger than the answer allows end the page early, and its
    /// token continues after the last item it holds; a stream's batch
    /// splits into messages that each fit.
    #[test]
    fn answers_are_bounded_in_bytes() {
        let big = "é".repeat(answer_bytes() / 5); // 2/5 of the budget each
        let page = Page { items: vec![big.clone(); 5], next_after: None, seqs: vec![10, 11, 12, 13, 14] };
        let paging = Paging::of(5, "", "").unwrap();
        let (items, token): (Vec<String>, _) = paging.answer(page);
        assert_eq!(items.len(), 2);
        assert_eq!(PageToken::decode(&token, ""), Ok(Some(11)));

        let small = Page { items: vec!["a".to_string(); 3], next_after: None, seqs: vec![1, 2, 3] };
        let (items, token): (Vec<String>, _) = paging.answer(small);
        assert_eq!((items.len(), token.as_str()), (3, ""), "a page that fits is whole");

        let chunks = chunks_by_bytes(vec!["é".repeat(STREAM_MESSAGE_BYTES / 5); 5]);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    }

    /// Fuzzed page tokens and request fields, from a fixed seed: every
    /// input is either read or refused with a reason, never a panic, and a
    /// token the service issued always reads back to its cursor.
    #[test]
    fn fuzzed_tokens_and_fields_are_read_or_refused() {
        let mut rng = fastrand::Rng::with_seed(20261202);
        let alphabet: Vec<char> = "abcXYZ019_-|=+/ v1\u{e9}\u{1f600}\u{0}\n".chars().collect();
        let text = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..120)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect()
        };
        for _ in 0..20_000 {
            let after = rng.i64(..);
            let filter = text(&mut rng);
            let issued = PageToken { after, filter: filter.clone() }.encode();
            assert_eq!(PageToken::decode(&issued, &filter), Ok(Some(after)));
            // A damaged token is refused with a reason, or is another valid
            // cursor of the same filter; never a panic.
            let mut damaged = issued.into_bytes();
            if !damaged.is_empty() {
                let at = rng.usize(..damaged.len());
                damaged[at] = rng.u8(..);
            }
            let damaged = String::from_utf8_lossy(&damaged).into_owned();
            if let Err(reason) = PageToken::decode(&damaged, &filter) {
                assert!(!reason.is_empty());
            }
            let raw = text(&mut rng);
            let _ = PageToken::decode(&raw, &filter);
            let _ = URL_SAFE_NO_PAD.decode(&raw);
            let mut v = Violations::new();
            let paging = Paging::read(&mut v, rng.i32(..), &raw, filter.clone());
            assert!(paging.size >= 1 && paging.size <= MAX_PAGE_SIZE);
            let _ = parse_line(&raw, rng.usize(1..300));
            let _ = parse_request_id(&raw);
        }
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
    fn paging_reads_both_fields_and_continues_with_the_same_filter() {
        let mut v = Violations::new();
        let first = Paging::read(&mut v, 0, "", "family=f1");
        assert!(v.is_empty());
        assert_eq!((first.size, first.after), (DEFAULT_PAGE_SIZE, None));
        let token = first.next_page_token(&Page { items: vec![1], next_after: Some(7), seqs: vec![7] });
        assert_eq!(Paging::read(&mut v, 5, &token, "family=f1").after, Some(7));
        assert!(v.is_empty());
        Paging::read(&mut v, -1, &token, "family=f2");
        assert!(!v.is_empty(), "a negative size and a token of another filter are refused");
        assert_eq!(first.next_page_token(&Page::<u8> { items: vec![], next_after: None, seqs: vec![] }), "");
    }

    #[test]
    fn request_ids_are_optional_and_bounded() {
        assert_eq!(parse_request_id(""), Ok(None));
        assert_eq!(parse_request_id("k1"), Ok(Some("k1".into())));
        assert!(parse_request_id(&"k".repeat(101)).is_err());
        assert!(parse_request_id("a\nb").is_err());
    }

    #[test]
    fn page_sizes_are_defaulted_and_capped() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(5), Ok(5));
        assert_eq!(page_size(1_000_000), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }
}
