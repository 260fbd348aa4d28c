//! The per-attempt log size cap: past it, the first half of the cap (the head) and the most
//! recent half (the tail) are kept, and what lies between is dropped. Readers show a marker
//! with the dropped byte count where the sequence numbers jump.

/// Where one attempt's log stands against the cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapState {
    /// Bytes stored now (head + tail).
    pub kept: u64,
    /// Last seq of the head, once the head is full.
    pub head_end: Option<i64>,
    pub head_bytes: u64,
    pub dropped: u64,
}

/// Accounts newly stored chunks `(seq, bytes)`, in seq order. Returns the new state and
/// how many bytes must be trimmed from the oldest end of the tail (seq > head_end).
pub fn account(mut s: CapState, cap: u64, chunks: &[(i64, u64)]) -> (CapState, u64) {
    let head_cap = cap / 2;
    for &(seq, len) in chunks {
        if s.head_end.is_none() {
            if s.head_bytes + len <= head_cap {
                s.head_bytes += len;
            } else {
                // This chunk is the first of the tail.
                s.head_end = Some(seq - 1);
            }
        }
        s.kept += len;
    }
    let tail = s.kept - s.head_bytes;
    let excess = match s.head_end {
        Some(_) => tail.saturating_sub(cap - head_cap),
        None => 0,
    };
    (s, excess)
}

/// Records that `removed` bytes were trimmed from the tail.
pub fn trimmed(mut s: CapState, removed: u64) -> CapState {
    s.kept -= removed.min(s.kept);
    s.dropped += removed;
    s
}

/// The marker shown in place of dropped output.
pub fn marker(dropped: u64, cap: u64) -> String {
    format!(
        "\n[drover: {dropped} bytes of output dropped here; the log keeps the first and last \
         {} bytes (log_cap_bytes = {cap})]\n",
        cap / 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_the_cap_nothing_is_dropped() {
        let (s, excess) = account(CapState::default(), 100, &[(0, 10), (1, 30)]);
        assert_eq!(excess, 0);
        assert_eq!(s.kept, 40);
        assert_eq!(s.head_end, None);
    }

    #[test]
    fn head_fills_then_tail_is_trimmed_to_half_the_cap() {
        let cap = 100;
        let mut s = CapState::default();
        let mut stored: Vec<(i64, u64)> = Vec::new();
        for seq in 0..20 {
            let (next, excess) = account(s, cap, &[(seq, 10)]);
            s = next;
            stored.push((seq, 10));
            // Trim the oldest tail chunks, as the store does.
            let mut removed = 0;
            while removed < excess {
                let i = stored
                    .iter()
                    .position(|(q, _)| Some(*q) > s.head_end)
                    .unwrap();
                removed += stored.remove(i).1;
            }
            s = trimmed(s, removed);
        }
        assert_eq!(s.head_end, Some(4), "50 bytes of head: seqs 0..=4");
        assert_eq!(s.head_bytes, 50);
        assert_eq!(s.kept, 100);
        assert_eq!(s.dropped, 100);
        let seqs: Vec<i64> = stored.iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 15, 16, 17, 18, 19]);
    }

    #[test]
    fn a_first_chunk_larger_than_the_head_starts_the_tail() {
        let (s, excess) = account(CapState::default(), 100, &[(0, 80)]);
        assert_eq!(s.head_end, Some(-1));
        assert_eq!(excess, 30);
        assert!(marker(30, 100).contains("30 bytes"));
    }
}
