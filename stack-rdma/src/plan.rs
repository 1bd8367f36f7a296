//! Cutting the byte stream into SENDs (no verbs; host-testable).
//!
//! Ceph's wire has no per-SEND header: the peer appends each receive's bytes in order,
//! so where the stream is cut is ours to choose. The peer receives every SEND into one
//! chunk of its own and hands that chunk up as the message buffer, so a segment that
//! lies wholly inside one SEND reaches the peer's protocol without a copy. Hence:
//!
//! * a part (preamble + small segments, a large segment, an epilogue — whatever
//!   `FrameWriter` queued) that does not fit the room left in the current SEND starts a
//!   new SEND if it fits an empty one: a large segment lands wholly in one receive chunk;
//! * only a part larger than a whole SEND is split (the peer gathers it anyway);
//! * each piece goes by reference when it already lives in registered memory of this
//!   worker (e.g. a received payload echoed back), else it is copied once into the
//!   SEND's own registered chunk — consecutive copies share one scatter/gather entry;
//! * a SEND that needs more scatter/gather entries than the queue pair has ends early
//!   (the next SEND carries on), so references are never turned into copies;
//! * a SEND small enough for the queue pair's inline limit goes inline: the provider
//!   copies it into the work request, no registered chunk is needed.

/// What the planner needs to know of one queued part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    /// Bytes in the part.
    pub len: usize,
    /// It lies in memory registered by this worker (can be sent by reference).
    pub registered: bool,
}

/// The queue pair's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest SEND: the peer's receive buffer size.
    pub max_send: usize,
    /// Scatter/gather entries of one SEND.
    pub max_sge: usize,
    /// Largest SEND posted inline (0: never).
    pub max_inline: usize,
}

/// How one piece travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Copied by the provider into the work request (the whole SEND is inline).
    Inline,
    /// By reference to registered memory.
    Ref,
    /// Copied into the SEND's registered chunk.
    Copy,
}

/// One piece of a SEND: `len` bytes at `offset` of queued part `part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the part in the queue.
    pub part: usize,
    /// Offset in the part.
    pub offset: usize,
    /// Length.
    pub len: usize,
    /// How it goes.
    pub how: How,
}

/// Where the next SEND starts in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Part index.
    pub part: usize,
    /// Offset in that part.
    pub offset: usize,
}

/// Plans the SEND that starts at `at`; `part(i)` describes queued part `i` (`None` past
/// the end). Fills `out` with its pieces and returns its length (0: nothing left) and
/// where the next SEND starts.
pub fn plan_send(
    part: impl Fn(usize) -> Option<PartInfo>,
    at: Cursor,
    limits: Limits,
    out: &mut Vec<Piece>,
) -> (usize, Cursor) {
    out.clear();
    let max_send = limits.max_send.max(1);
    let max_sge = limits.max_sge.max(1);
    let (mut i, mut off) = (at.part, at.offset);
    let (mut total, mut sges, mut last_copy) = (0usize, 0usize, false);
    while let Some(p) = part(i) {
        let avail = p.len.saturating_sub(off);
        if avail == 0 {
            i += 1;
            off = 0;
            continue;
        }
        let room = max_send - total;
        if room == 0 {
            break;
        }
        let take = if avail <= room {
            avail
        } else if total > 0 && avail <= max_send {
            // Starts the next SEND, so that it lands in one receive chunk.
            break;
        } else {
            // Larger than a SEND: split, filling this one.
            room
        };
        let how = if p.registered { How::Ref } else { How::Copy };
        let need = match how {
            How::Copy if last_copy => 0,
            _ => 1,
        };
        if sges + need > max_sge {
            break;
        }
        match (how, out.last_mut()) {
            // The same part continued by copy: one piece.
            (How::Copy, Some(prev)) if prev.how == How::Copy && prev.part == i && prev.offset + prev.len == off => {
                prev.len += take;
            }
            _ => out.push(Piece { part: i, offset: off, len: take, how }),
        }
        sges += need;
        last_copy = how == How::Copy;
        total += take;
        if take < avail {
            off += take;
            break;
        }
        i += 1;
        off = 0;
    }
    if total > 0 && total <= limits.max_inline && out.len() <= max_sge {
        for p in out.iter_mut() {
            p.how = How::Inline;
        }
    }
    (total, Cursor { part: i, offset: off })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(spec: &[(usize, bool)]) -> impl Fn(usize) -> Option<PartInfo> + '_ {
        move |i| spec.get(i).map(|&(len, registered)| PartInfo { len, registered })
    }

    const L: Limits = Limits { max_send: 1000, max_sge: 4, max_inline: 0 };

    /// Every SEND of the queue: (length, pieces).
    fn all(spec: &[(usize, bool)], limits: Limits) -> Vec<(usize, Vec<Piece>)> {
        let mut at = Cursor::default();
        let mut sends = Vec::new();
        let mut out = Vec::new();
        loop {
            let (n, next) = plan_send(parts(spec), at, limits, &mut out);
            if n == 0 {
                return sends;
            }
            assert!(n <= limits.max_send, "SEND of {n} over the limit");
            assert_eq!(out.iter().map(|p| p.len).sum::<usize>(), n);
            sends.push((n, out.clone()));
            at = next;
        }
    }

    fn lens(sends: &[(usize, Vec<Piece>)]) -> Vec<usize> {
        sends.iter().map(|s| s.0).collect()
    }

    #[test]
    fn small_parts_share_a_send_and_one_copy_entry() {
        let s = all(&[(100, false), (200, false), (50, false)], L);
        assert_eq!(lens(&s), [350]);
        assert!(s[0].1.iter().all(|p| p.how == How::Copy));
    }

    #[test]
    fn a_part_that_does_not_fit_the_room_left_starts_the_next_send() {
        // header 100, payload 950 (fits an empty SEND), epilogue 13
        let s = all(&[(100, false), (950, true), (13, false)], L);
        assert_eq!(lens(&s), [100, 963]);
        assert_eq!(s[1].1[0], Piece { part: 1, offset: 0, len: 950, how: How::Ref });
    }

    #[test]
    fn only_parts_larger_than_a_send_are_split_and_they_fill_the_room() {
        let s = all(&[(100, false), (2500, false), (10, false)], L);
        assert_eq!(lens(&s), [1000, 1000, 610]);
        assert_eq!(s[0].1[1], Piece { part: 1, offset: 0, len: 900, how: How::Copy });
        assert_eq!(s[1].1, [Piece { part: 1, offset: 900, len: 1000, how: How::Copy }]);
        assert_eq!(s[2].1[0], Piece { part: 1, offset: 1900, len: 600, how: How::Copy });
    }

    #[test]
    fn a_part_exactly_one_send_long_is_alone_and_whole() {
        let s = all(&[(10, false), (1000, true), (10, false)], L);
        assert_eq!(lens(&s), [10, 1000, 10]);
    }

    #[test]
    fn the_cursor_resumes_inside_a_part() {
        let mut out = Vec::new();
        let spec = [(100, false), (2500, false)];
        let (n, at) = plan_send(parts(&spec), Cursor { part: 1, offset: 2000 }, L, &mut out);
        assert_eq!((n, at), (500, Cursor { part: 2, offset: 0 }));
    }

    #[test]
    fn scatter_gather_entries_end_a_send_instead_of_copying_references() {
        // ref, copy, ref, copy, ref: 5 entries needed, 4 allowed.
        let spec = [(100, true), (10, false), (100, true), (10, false), (100, true)];
        let s = all(&spec, L);
        assert_eq!(lens(&s), [220, 100]);
        assert!(s.iter().flat_map(|x| &x.1).filter(|p| p.part % 2 == 0).all(|p| p.how == How::Ref));
        // Consecutive copies of different parts still share one entry.
        let s = all(&[(10, false), (10, false), (10, false), (10, false), (10, false)], Limits { max_sge: 1, ..L });
        assert_eq!(lens(&s), [50]);
    }

    #[test]
    fn inline_when_the_whole_send_fits_the_inline_limit() {
        let lim = Limits { max_inline: 256, ..L };
        let s = all(&[(100, false), (100, true)], lim);
        assert_eq!(lens(&s), [200]);
        assert!(s[0].1.iter().all(|p| p.how == How::Inline));
        let s = all(&[(200, false), (100, false)], lim);
        assert!(s[0].1.iter().all(|p| p.how == How::Copy), "300 bytes: over the inline limit");
        let s = all(&[(256, false)], lim);
        assert_eq!(s[0].1[0].how, How::Inline, "the limit itself is inline");
    }

    #[test]
    fn empty_parts_are_skipped_and_an_empty_queue_plans_nothing() {
        assert!(all(&[], L).is_empty());
        assert_eq!(lens(&all(&[(0, false), (5, false), (0, true)], L)), [5]);
    }

    #[test]
    fn every_byte_once_in_order_for_random_queues() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..300 {
            let n = rnd(12) as usize;
            let spec: Vec<(usize, bool)> = (0..n).map(|_| (rnd(3000) as usize, rnd(2) == 0)).collect();
            let lim = Limits {
                max_send: 1 + rnd(2000) as usize,
                max_sge: 1 + rnd(6) as usize,
                max_inline: rnd(300) as usize,
            };
            let mut next = (0usize, 0usize);
            for (_, pieces) in all(&spec, lim) {
                for p in pieces {
                    // Pieces follow each other through the parts without gap or overlap.
                    while next.0 < spec.len() && next.1 == spec[next.0].0 {
                        next = (next.0 + 1, 0);
                    }
                    assert_eq!((p.part, p.offset), next, "{spec:?} {lim:?}");
                    next.1 += p.len;
                }
            }
            while next.0 < spec.len() && next.1 == spec[next.0].0 {
                next = (next.0 + 1, 0);
            }
            assert_eq!(next.0, spec.len(), "everything planned: {spec:?} {lim:?}");
        }
    }
}
