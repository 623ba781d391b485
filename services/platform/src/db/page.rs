//! Keyset pagination: every list of a service pages over a `seq` column
//! that orders rows by creation. A deep page costs what the first does: the
//! query seeks to `seq > cursor` on the index.

use super::Row;
use crate::Error;

/// One page of a listing: the items and the cursor of the next page.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `seq` to continue after; None on the last page.
    pub next_after: Option<i64>,
}

impl<T> Page<T> {
    /// The same page with every item converted (to its wire form, say).
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_after: self.next_after }
    }

    /// A page of `limit` items out of `items` fetched with `LIMIT limit + 1`
    /// (each with its `seq`): the extra item only says another page exists.
    pub fn cut(mut items: Vec<(i64, T)>, limit: u32) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_after = if more { items.last().map(|(seq, _)| *seq) } else { None };
        Self { items: items.into_iter().map(|(_, item)| item).collect(), next_after }
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
