//! Page tokens for every List call: opaque to clients, bound to the request's filters.
//!
//! A token is base64url (no padding) of a small JSON object: the list it belongs to
//! (`l`), a hash of the request's filters (`f`: every field except page_size and
//! page_token) and the keyset cursor (`c`, the sort key of the last item returned). A
//! token sent to another List call, or with other filters than the request that produced
//! it, is INVALID_ARGUMENT naming `page_token`: following it would silently skip or
//! repeat rows. Changing page_size between pages is allowed.
//!
//! Tokens are not signed: a client that edits one only moves its own cursor, and every
//! cursor is parsed into typed values before it reaches a query.

use crate::error::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest page token accepted (real ones are well under this).
pub const MAX_TOKEN_LEN: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Token<C> {
    l: String,
    f: String,
    c: C,
}

/// A hash of the request's filters: the message as JSON (keys sorted, so maps hash the
/// same whatever their order) without its paging fields.
pub fn filter_hash<R: Serialize>(req: &R) -> String {
    let mut v = serde_json::to_value(req).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("page_size");
        m.remove("page_token");
    }
    let digest = Sha256::digest(v.to_string().as_bytes());
    hex::encode(&digest[..8])
}

fn bad(list: &str) -> Error {
    Error::Invalid(format!(
        "page_token: not a token from a previous {list} response"
    ))
}

/// The page tokens of one List request: made from the request before it is taken apart.
pub struct Pager {
    list: &'static str,
    filters: String,
    token: String,
}

impl Pager {
    /// `req` must have fields `page_token` (and `page_size`, if any) under those names.
    pub fn new<R: Serialize>(list: &'static str, req: &R, page_token: &str) -> Pager {
        Pager {
            list,
            filters: filter_hash(req),
            token: page_token.to_string(),
        }
    }

    /// The cursor the request's page_token carries (None for the first page). Refused
    /// when the token is not one of this list's, or was made for other filters.
    pub fn cursor<C: DeserializeOwned>(&self) -> Result<Option<C>, Error> {
        if self.token.is_empty() {
            return Ok(None);
        }
        let bad = || bad(self.list);
        if self.token.len() > MAX_TOKEN_LEN {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(&self.token).map_err(|_| bad())?;
        let t: Token<C> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if t.l != self.list {
            return Err(bad());
        }
        if t.f != self.filters {
            return Err(Error::Invalid(
                "page_token: made for a request with other filters; send the same filters \
                 as for the first page, or no token"
                    .into(),
            ));
        }
        Ok(Some(t.c))
    }

    /// The token for the page after the one ending at `cursor`.
    pub fn token<C: Serialize>(&self, cursor: &C) -> String {
        let t = Token {
            l: self.list.to_string(),
            f: self.filters.clone(),
            c: cursor,
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
    }

    /// The token for `next` if there is one, else empty (the last page).
    pub fn next<C: Serialize>(&self, next: Option<&C>) -> String {
        next.map(|c| self.token(c)).unwrap_or_default()
    }
}

/// A page size: 0 means `default`; more than `max` is refused.
pub fn page_size(field: &str, asked: u32, default: u32, max: u32) -> Result<usize, Error> {
    match asked {
        0 => Ok(default as usize),
        n if n > max => Err(Error::Invalid(format!("{field}: at most {max}"))),
        n => Ok(n as usize),
    }
}

/// One page of an already sorted, bounded list: the items whose key sorts after `after`,
/// at most `size` of them, and the key of the last one when more follow.
pub fn page_sorted<T, K: Ord + Clone>(
    items: Vec<T>,
    key: impl Fn(&T) -> K,
    after: Option<&K>,
    size: usize,
) -> (Vec<T>, Option<K>) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|t| after.is_none_or(|a| key(t) > *a))
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = if more { rest.last().map(&key) } else { None };
    (rest, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Req {
        queue: String,
        page_size: u32,
        page_token: String,
    }

    fn req(queue: &str, size: u32, token: &str) -> Req {
        Req {
            queue: queue.into(),
            page_size: size,
            page_token: token.into(),
        }
    }

    fn pager(list: &'static str, r: Req) -> Pager {
        Pager::new(list, &r, &r.page_token)
    }

    #[test]
    fn tokens_round_trip_and_ignore_page_size() {
        let t = pager("ListX", req("a", 10, "")).token(&(5i64, "k".to_string()));
        let got: Option<(i64, String)> = pager("ListX", req("a", 99, &t)).cursor().unwrap();
        assert_eq!(got, Some((5, "k".to_string())));
    }

    #[test]
    fn tokens_are_bound_to_filters_and_list() {
        let t = pager("ListX", req("a", 10, "")).token(&1i64);
        let e = pager("ListX", req("b", 10, &t))
            .cursor::<i64>()
            .unwrap_err();
        assert!(e.to_string().starts_with("page_token:"), "{e}");
        let e = pager("ListY", req("a", 10, &t))
            .cursor::<i64>()
            .unwrap_err();
        assert!(e.to_string().starts_with("page_token:"), "{e}");
        for junk in ["x", "12", "!!", &"A".repeat(2000)] {
            assert!(pager("ListX", req("a", 1, junk)).cursor::<i64>().is_err());
        }
    }

    #[test]
    fn sorted_pages_walk_everything_once() {
        let items: Vec<u32> = (0..10).collect();
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page, next) = page_sorted(items.clone(), |i| *i, after.as_ref(), 3);
            seen.extend(page);
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }
}
