//! Work request ids (no verbs; host-testable).
//!
//! A `wr_id` is the only thing a completion carries back besides the QP number, so it
//! says what the work request was for and which *use* of that thing:
//!
//! ```text
//!  63  62 61                 38 37                                   0
//! [kind ][ slot (24 bits)      ][ generation (38 bits)                 ]
//! ```
//!
//! * kind: a SEND (slot = its send context), a receive (slot = its chunk) or a close
//!   SEND (slot = its send context).
//! * generation: bumped every time the slot is reused, so a completion that arrives
//!   for an earlier use — a late flush after a queue pair was destroyed by force, a
//!   completion polled after its connection was torn down — names a generation that is
//!   no longer current and is ignored instead of being charged to whoever uses the slot
//!   now. At 2^38 reuses of one slot before a stale completion shows up, wrap-around is
//!   not a concern.

/// Bits of the slot field.
pub const SLOT_BITS: u32 = 24;
/// Bits of the generation field.
pub const GEN_BITS: u32 = 38;
/// Largest slot number.
pub const MAX_SLOT: u32 = (1 << SLOT_BITS) - 1;
/// Generations wrap at this mask.
pub const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// What a work request was posted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A data SEND; the slot is its send context.
    Send,
    /// A receive; the slot is its chunk's index in the receive pool.
    Recv,
    /// The 0-byte SEND that closes a connection; the slot is its send context.
    Fin,
}

impl Kind {
    fn bits(self) -> u64 {
        match self {
            Kind::Send => 1,
            Kind::Recv => 2,
            Kind::Fin => 3,
        }
    }

    fn from_bits(b: u64) -> Option<Kind> {
        match b {
            1 => Some(Kind::Send),
            2 => Some(Kind::Recv),
            3 => Some(Kind::Fin),
            _ => None,
        }
    }
}

/// A decoded work request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrId {
    /// What it was for.
    pub kind: Kind,
    /// Which send context or chunk.
    pub slot: u32,
    /// Which use of the slot (masked to [`GEN_BITS`]).
    pub gen: u64,
}

/// A slot number that does not fit [`SLOT_BITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("work request slot {0} exceeds {MAX_SLOT}")]
pub struct SlotTooLarge(pub u32);

impl WrId {
    /// Encodes; the generation is masked to [`GEN_BITS`].
    ///
    /// # Errors
    ///
    /// [`SlotTooLarge`] for a slot beyond [`MAX_SLOT`].
    pub fn encode(kind: Kind, slot: u32, gen: u64) -> Result<u64, SlotTooLarge> {
        if slot > MAX_SLOT {
            return Err(SlotTooLarge(slot));
        }
        Ok(kind.bits() << 62 | u64::from(slot) << GEN_BITS | (gen & GEN_MASK))
    }

    /// Decodes a `wr_id` from a completion; `None` for one this stack never posts (kind 0).
    pub fn decode(wr_id: u64) -> Option<WrId> {
        let kind = Kind::from_bits(wr_id >> 62)?;
        Some(WrId { kind, slot: ((wr_id >> GEN_BITS) as u32) & MAX_SLOT, gen: wr_id & GEN_MASK })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind_at_the_field_limits() {
        for kind in [Kind::Send, Kind::Recv, Kind::Fin] {
            for (slot, gen) in [(0, 0), (1, 1), (MAX_SLOT, GEN_MASK), (12_345, 0x2a_0000_0001)] {
                let id = WrId::encode(kind, slot, gen).unwrap();
                assert_eq!(WrId::decode(id), Some(WrId { kind, slot, gen }), "{kind:?} {slot} {gen}");
            }
        }
    }

    #[test]
    fn generations_wrap_within_their_field_and_never_touch_the_slot() {
        let id = WrId::encode(Kind::Send, 7, GEN_MASK + 5).unwrap();
        assert_eq!(WrId::decode(id), Some(WrId { kind: Kind::Send, slot: 7, gen: 4 }));
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(WrId::encode(Kind::Recv, MAX_SLOT + 1, 0), Err(SlotTooLarge(MAX_SLOT + 1)));
        assert_eq!(WrId::decode(0), None, "kind 0 is never posted");
        assert_eq!(WrId::decode(5), None);
    }

    #[test]
    fn kinds_are_told_apart() {
        let a = WrId::encode(Kind::Send, 3, 9).unwrap();
        let b = WrId::encode(Kind::Recv, 3, 9).unwrap();
        let c = WrId::encode(Kind::Fin, 3, 9).unwrap();
        assert!(a != b && b != c && a != c);
    }
}
