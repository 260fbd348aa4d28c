//! Bounding a page of results by bytes as well as by count.

/// The leading items (id, size in bytes) whose sizes add up to at most `budget`; always
/// at least the first, so a page is never empty while items remain.
pub fn fit_in_budget<T: Clone>(items: &[(T, i64)], budget: i64) -> Vec<T> {
    let mut used: i64 = 0;
    let mut out = Vec::new();
    for (id, size) in items {
        let size = (*size).max(0);
        if !out.is_empty() && used.saturating_add(size) > budget {
            break;
        }
        used = used.saturating_add(size);
        out.push(id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_stop_at_the_budget_but_never_empty() {
        type Case<'a> = (&'a [(u8, i64)], i64, &'a [u8]);
        let table: [Case; 6] = [
            (&[], 10, &[]),
            (&[(1, 4), (2, 4), (3, 4)], 10, &[1, 2]),
            (&[(1, 4), (2, 6), (3, 4)], 10, &[1, 2]),
            (&[(1, 50)], 10, &[1]),
            (&[(1, 50), (2, 1)], 10, &[1]),
            (&[(1, i64::MAX), (2, 5)], i64::MAX - 1, &[1]),
        ];
        for (items, budget, want) in table {
            assert_eq!(fit_in_budget(items, budget), want.to_vec(), "{items:?}");
        }
    }
}
