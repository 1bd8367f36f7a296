//! The live links of a session table, by connection id.

use crate::event::IdMap;

/// Values by connection id, in a slab: the values stay in slots, a map gives an id's
/// slot, and the slot last looked up is tried first.
///
/// A worker looks the same connection up several times per message it reads and
/// answers (about 25 instructions each through the map under callgrind); checking the
/// last one's slot takes a few.
pub(crate) struct Live<L> {
    slots: Vec<Option<(u64, L)>>,
    index: IdMap<u64, usize>,
    // Slots emptied by `remove`, for `insert` to fill before growing.
    free: Vec<usize>,
    // The id and slot of the last `get_mut`, while that id is here: `remove` clears it,
    // and an id stays in its slot until removed.
    last: Option<(u64, usize)>,
}

impl<L> Default for Live<L> {
    fn default() -> Self {
        Live { slots: Vec::new(), index: IdMap::default(), free: Vec::new(), last: None }
    }
}

impl<L> Live<L> {
    /// Puts `value` under `id`, replacing what was there.
    pub(crate) fn insert(&mut self, id: u64, value: L) {
        if let Some(&slot) = self.index.get(&id) {
            self.slots[slot] = Some((id, value));
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some((id, value));
                slot
            }
            None => {
                self.slots.push(Some((id, value)));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
    }

    /// Takes out what is under `id`.
    pub(crate) fn remove(&mut self, id: u64) -> Option<L> {
        let slot = self.index.remove(&id)?;
        if self.last.is_some_and(|(last, _)| last == id) {
            self.last = None;
        }
        let (_, value) = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(value)
    }

    /// What is under `id`.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut L> {
        let slot = match self.last {
            Some((last, slot)) if last == id => slot,
            _ => self.find(id)?,
        };
        self.slots.get_mut(slot)?.as_mut().map(|(_, value)| value)
    }

    // Out of line: what is inlined at the many lookups stays small.
    #[inline(never)]
    fn find(&mut self, id: u64) -> Option<usize> {
        let slot = *self.index.get(&id)?;
        self.last = Some((id, slot));
        Some(slot)
    }

    /// What is under `id`.
    pub(crate) fn get(&self, id: u64) -> Option<&L> {
        let slot = *self.index.get(&id)?;
        self.slots.get(slot)?.as_ref().map(|(_, value)| value)
    }

    /// Every id and value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &L)> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(id, value)| (*id, value)))
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_id_through_inserts_and_removals() {
        let mut live = Live::default();
        assert_eq!(live.get_mut(0), None, "nothing under the guess's id before a lookup");
        live.insert(7, "a");
        live.insert(9, "b");
        assert_eq!(live.get_mut(7), Some(&mut "a"));
        assert_eq!(live.get_mut(7), Some(&mut "a"), "again, through the last slot");
        assert_eq!(live.remove(7), Some("a"));
        assert_eq!(live.get_mut(7), None, "the last slot's guess is checked against its id");
        assert_eq!(live.get(7), None);
        // The freed slot is reused by another id; the old one still finds nothing.
        live.insert(11, "c");
        assert_eq!(live.get_mut(7), None);
        assert_eq!(live.get_mut(11), Some(&mut "c"));
        assert_eq!(live.get(9), Some(&"b"));
        live.insert(9, "B");
        assert_eq!(live.get_mut(9), Some(&mut "B"), "replaced in place");
        assert_eq!(live.len(), 2);
        let mut all: Vec<_> = live.iter().map(|(id, v)| (id, *v)).collect();
        all.sort();
        assert_eq!(all, [(9, "B"), (11, "c")]);
        assert_eq!(live.remove(9), Some("B"));
        assert_eq!(live.remove(11), Some("c"));
        assert_eq!(live.remove(11), None);
        assert!(live.is_empty());
        assert_eq!(live.iter().count(), 0);
    }

    #[test]
    fn an_id_inserted_again_is_found_in_its_new_slot() {
        let mut live = Live::default();
        live.insert(1, "one");
        live.insert(2, "two");
        assert_eq!(live.get_mut(2), Some(&mut "two"));
        // Taken out and put back (a session handed to another transport): the freed
        // slot goes to another id first, so 2 lands elsewhere.
        assert_eq!(live.remove(2), Some("two"));
        live.insert(3, "three");
        live.insert(2, "two again");
        assert_eq!(live.get_mut(2), Some(&mut "two again"));
        assert_eq!(live.get_mut(3), Some(&mut "three"));
        assert_eq!(live.get_mut(1), Some(&mut "one"));
    }

    #[test]
    fn id_zero_is_an_id_like_any_other() {
        let mut live = Live::default();
        live.insert(5, 'x');
        // The initial guess points at slot 0 for id 0; slot 0 holds id 5.
        assert_eq!(live.get_mut(0), None);
        live.insert(0, 'z');
        assert_eq!(live.get_mut(0), Some(&mut 'z'));
        assert_eq!(live.get_mut(5), Some(&mut 'x'));
        assert_eq!(live.get_mut(0), Some(&mut 'z'));
    }
}
