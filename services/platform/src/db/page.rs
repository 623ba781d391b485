//! Keyset pagination: every list of a service pages over a `seq` column
//! that orders rows by creation. A deep page costs what the first does: the
//! query seeks to `seq > cursor` on the index.

use super::{Database, Row};
use crate::Error;

/// One page of a listing: the items and the cursor of the next page.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `seq` to continue after; None on the last page.
    pub next_after: Option<i64>,
    /// Each item's `seq`, so that an answer cut short (by its size in
    /// bytes) can continue after its own last item.
    pub seqs: Vec<i64>,
}

impl<T> Page<T> {
    /// The same page with every item converted (to its wire form, say).
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_after: self.next_after, seqs: self.seqs }
    }

    /// A page of `limit` items out of `items` fetched with `LIMIT limit + 1`
    /// (each with its `seq`): the extra item only says another page exists.
    pub fn cut(mut items: Vec<(i64, T)>, limit: u32) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_after = if more { items.last().map(|(seq, _)| *seq) } else { None };
        let (seqs, items) = items.into_iter().unzip();
        Self { items, next_after, seqs }
    }
}

/// The page of rows of a keyset query over a `seq` column, asked with
/// `LIMIT limit + 1`.
pub fn keyset<T>(
    rows: Vec<Row>,
    limit: u32,
    read: impl Fn(&Row) -> Result<T, Error>,
) -> Result<Page<T>, Error> {
    let items = rows
        .iter()
        .take(limit as usize + 1)
        .map(|row| Ok((row.get::<i64>("seq")?, read(row)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Page::cut(items, limit))
}

/// What a listing keeps: equality on the columns that have a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Name in page tokens, column, value (None: any).
    fields: Vec<(&'static str, &'static str, Option<String>)>,
}

impl Filter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the rows whose `column` is `value`, when there is a value;
    /// `name` stands for it in page tokens.
    pub fn by(mut self, name: &'static str, column: &'static str, value: Option<impl Into<String>>) -> Self {
        self.fields.push((name, column, value.map(Into::into)));
        self
    }

    /// A canonical rendering (`family=fam_1;state=`), bound into page
    /// tokens so that a token only continues the listing it came from.
    pub fn fingerprint(&self) -> String {
        let fields =
            self.fields.iter().map(|(name, _, value)| format!("{name}={}", value.as_deref().unwrap_or("")));
        fields.collect::<Vec<_>>().join(";")
    }
}

/// One page of a listing in creation order: `select` (`SELECT <columns>
/// FROM <table>`) narrowed by `filter`, the rows after the cursor `after`,
/// read by `read`. The text differs by which filters are set, so each shape
/// can use its index; only column names from the caller's code go into it,
/// every value is bound.
pub async fn page<T>(
    db: &Database,
    select: &'static str,
    filter: &Filter,
    after: Option<i64>,
    limit: u32,
    read: impl Fn(&Row) -> Result<T, Error>,
) -> Result<Page<T>, Error> {
    let mut sql = format!("{select} WHERE seq > $1");
    let set: Vec<(&str, &str)> =
        filter.fields.iter().filter_map(|(_, column, value)| Some((*column, value.as_deref()?))).collect();
    for (n, (column, _)) in set.iter().enumerate() {
        sql.push_str(&format!(" AND {column} = ${}", n + 3));
    }
    // `CAST`, not `LIMIT $2`: SQLite's planner reads a bare placeholder's
    // value for its LIMIT, and then every new binding, even of the same
    // value, expires the prepared statement, which is prepared again at
    // each run (a sixth of ListAvailableOffers' CPU). Through a `CAST` it
    // does not look, and the statement stays prepared.
    sql.push_str(" ORDER BY seq LIMIT CAST($2 AS BIGINT)");
    let mut query = db.query_built(sql).bind(after.unwrap_or(0)).bind(i64::from(limit) + 1);
    for (_, value) in set {
        query = query.bind(value);
    }
    keyset(query.fetch_all().await?, limit, read)
}
