//! `limit` and `continue` on lists: a list asked for in pages is read once, and its later pages
//! come from that reading (the snapshot the first page was cut from, as the apiserver serves
//! pages from one etcd revision), however the objects change meanwhile. A `continue` token names
//! its snapshot and offset; a snapshot is kept for [`KEPT_FOR`], and at most [`MOST_KEPT`] of
//! them, so a token past either is answered 410 `Expired`, as a token for a compacted revision is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::status::{ApiError, ApiResult};

/// How long a list's later pages stay available.
pub const KEPT_FOR: Duration = Duration::from_secs(300);
/// Most lists kept for their later pages; the oldest goes first.
pub const MOST_KEPT: usize = 64;

/// One page of a list.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub items: Vec<Value>,
    pub revision: u64,
    /// The token for the next page, and how many items are after this one.
    pub next: Option<(String, usize)>,
}

/// Lists being read page by page.
#[derive(Debug, Default)]
pub struct Pages {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    snapshots: HashMap<u64, Snapshot>,
}

#[derive(Debug)]
struct Snapshot {
    /// Which list it is (resource, namespace and selectors), so a token is used for no other.
    query: String,
    items: Vec<Value>,
    revision: u64,
    taken: Instant,
}

impl Pages {
    /// The first page (of at most `limit` items) of `items`, read at `revision` for `query`;
    /// the rest kept for the token the page carries.
    pub fn first(&self, query: &str, items: Vec<Value>, revision: u64, limit: usize, now: Instant) -> Page {
        if items.len() <= limit {
            return Page { items, revision, next: None };
        }
        let mut inner = self.lock();
        inner.forget_old(now);
        let id = inner.next_id;
        inner.next_id += 1;
        let page = items[..limit].to_vec();
        let remaining = items.len() - limit;
        inner.snapshots.insert(id, Snapshot { query: query.to_owned(), items, revision, taken: now });
        Page { items: page, revision, next: Some((token_for(id, limit), remaining)) }
    }

    /// The page `token` points at, of at most `limit` items, from the list it was cut from.
    pub fn next(&self, query: &str, token: &str, limit: Option<usize>, now: Instant) -> ApiResult<Page> {
        let (id, offset) = parse(token)?;
        let mut inner = self.lock();
        inner.forget_old(now);
        let expired = || {
            ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            )
        };
        let snapshot = inner.snapshots.get(&id).ok_or_else(expired)?;
        if snapshot.query != query || offset > snapshot.items.len() {
            return Err(ApiError::bad_request("the continue token does not belong to this list"));
        }
        let end = limit.map_or(snapshot.items.len(), |limit| (offset + limit).min(snapshot.items.len()));
        let items = snapshot.items[offset..end].to_vec();
        let revision = snapshot.revision;
        let remaining = snapshot.items.len() - end;
        if remaining == 0 {
            inner.snapshots.remove(&id);
            return Ok(Page { items, revision, next: None });
        }
        Ok(Page { items, revision, next: Some((token_for(id, end), remaining)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// Drops snapshots older than [`KEPT_FOR`], then the oldest beyond [`MOST_KEPT`] − 1 (making
    /// room for one more).
    fn forget_old(&mut self, now: Instant) {
        self.snapshots.retain(|_, s| now.duration_since(s.taken) < KEPT_FOR);
        while self.snapshots.len() >= MOST_KEPT {
            let oldest = self.snapshots.iter().min_by_key(|(id, _)| **id).map(|(id, _)| *id);
            oldest.map(|id| self.snapshots.remove(&id));
        }
    }
}

fn token_for(id: u64, offset: usize) -> String {
    format!("{id}.{offset}")
}

fn parse(token: &str) -> ApiResult<(u64, usize)> {
    token
        .split_once('.')
        .and_then(|(id, offset)| Some((id.parse().ok()?, offset.parse().ok()?)))
        .ok_or_else(|| ApiError::bad_request(format!("the continue token {token:?} is not valid")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!(i)).collect()
    }

    #[test]
    fn pages_come_from_the_first_reading_until_the_last() {
        let pages = Pages::default();
        let now = Instant::now();
        let first = pages.first("pods", items(5), 7, 2, now);
        assert_eq!(first.items, items(2));
        let (token, remaining) = first.next.clone().unwrap();
        assert_eq!(remaining, 3);
        let second = pages.next("pods", &token, Some(2), now).unwrap();
        assert_eq!((second.items, second.revision), (vec![json!(2), json!(3)], 7));
        let (token, remaining) = second.next.unwrap();
        assert_eq!(remaining, 1);
        let last = pages.next("pods", &token, Some(2), now).unwrap();
        assert_eq!((last.items, last.next), (vec![json!(4)], None));
        assert_eq!(pages.next("pods", &token, Some(2), now).unwrap_err().code, 410, "a finished list is gone");
        assert_eq!(pages.first("pods", items(2), 7, 2, now).next, None, "one page needs no token");
    }

    #[test]
    fn old_tokens_are_gone_and_foreign_ones_refused() {
        let pages = Pages::default();
        let now = Instant::now();
        let (token, _) = pages.first("pods", items(5), 7, 2, now).next.unwrap();
        assert_eq!(pages.next("services", &token, Some(2), now).unwrap_err().code, 400);
        assert_eq!(pages.next("pods", "garbage", Some(2), now).unwrap_err().code, 400);
        assert_eq!(pages.next("pods", &token, Some(2), now + KEPT_FOR).unwrap_err().code, 410);
        let (first, _) = pages.first("pods", items(5), 7, 2, now).next.unwrap();
        for _ in 0..MOST_KEPT {
            pages.first("pods", items(5), 7, 2, now);
        }
        assert_eq!(pages.next("pods", &first, Some(2), now).unwrap_err().code, 410, "evicted by newer lists");
    }
}
