//! A slab whose entries are named by (slot, generation) (no verbs; host-testable).
//!
//! Send contexts live here: a SEND's `wr_id` carries its key
//! ([`crate::wrid`]), and its completion finds the context by that key. Removing an entry
//! bumps its slot's generation, so a key handed out earlier never finds the entry that
//! reuses the slot: a stale completion is told apart from a current one, and nothing is
//! ever taken out (or given back) twice.

use crate::wrid::{GEN_MASK, MAX_SLOT};

/// Names one entry: its slot and which use of the slot it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The slot.
    pub slot: u32,
    /// The slot's generation when the entry was inserted.
    pub gen: u64,
}

#[derive(Debug)]
struct Entry<T> {
    gen: u64,
    value: Option<T>,
}

/// Entries by [`Key`]; free slots are reused lowest-last-freed first.
#[derive(Debug)]
pub struct GenSlab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for GenSlab<T> {
    fn default() -> Self {
        GenSlab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> GenSlab<T> {
    /// An empty slab.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries present.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts `value`; `None` when every slot a `wr_id` can name is taken.
    pub fn insert(&mut self, value: T) -> Option<Key> {
        self.try_insert(value).ok()
    }

    /// Inserts `value`, or gives it back when every slot a `wr_id` can name is taken.
    ///
    /// # Errors
    ///
    /// `value`, when the slab is full.
    pub fn try_insert(&mut self, value: T) -> Result<Key, T> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let Some(s) = u32::try_from(self.entries.len()).ok().filter(|&s| s <= MAX_SLOT) else {
                    return Err(value);
                };
                self.entries.push(Entry { gen: 0, value: None });
                s
            }
        };
        let e = &mut self.entries[slot as usize];
        e.value = Some(value);
        self.len += 1;
        Ok(Key { slot, gen: e.gen })
    }

    /// The entry of `key`, if `key` is current.
    pub fn get(&self, key: Key) -> Option<&T> {
        self.entries.get(key.slot as usize).filter(|e| e.gen == key.gen).and_then(|e| e.value.as_ref())
    }

    /// The entry of `key`, writable, if `key` is current.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.entries.get_mut(key.slot as usize).filter(|e| e.gen == key.gen).and_then(|e| e.value.as_mut())
    }

    /// Takes the entry of `key` out if `key` is current (the slot's generation moves on);
    /// `None` for a stale or unknown key, and nothing changes then.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let e = self.entries.get_mut(key.slot as usize)?;
        if e.gen != key.gen {
            return None;
        }
        let v = e.value.take()?;
        e.gen = (e.gen + 1) & GEN_MASK;
        self.free.push(key.slot);
        self.len -= 1;
        Some(v)
    }

    /// Keys of the entries for which `f` holds.
    pub fn keys_where(&self, mut f: impl FnMut(&T) -> bool) -> Vec<Key> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let v = e.value.as_ref()?;
                f(v).then_some(Key { slot: i as u32, gen: e.gen })
            })
            .collect()
    }
}

/// Things posted under a `wr_id` of kind [`crate::wrid::Kind::Recv`]: each post takes a
/// slot of its own, named with the slot's current generation. Taking an entry out needs
/// the `wr_id` of its current post, so a completion gives a chunk back once, and a stale
/// completion (an earlier post under the same slot) gives nothing. The table is as large
/// as the most entries ever posted at once, whatever the chunks' indices.
#[derive(Debug)]
pub struct PostedTable<T> {
    slab: GenSlab<T>,
}

impl<T> Default for PostedTable<T> {
    fn default() -> Self {
        PostedTable { slab: GenSlab::new() }
    }
}

/// Why [`PostedTable::enter`] refused: every slot a `wr_id` can name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {} receives posted", crate::wrid::MAX_SLOT as u64 + 1)]
pub struct TableFull;

impl<T> PostedTable<T> {
    /// Entries posted.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when nothing is posted.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Records `value` as posted; returns the `wr_id` to post it with.
    ///
    /// # Errors
    ///
    /// [`TableFull`], with `value` given back.
    pub fn enter(&mut self, value: T) -> Result<u64, (T, TableFull)> {
        let key = self.slab.try_insert(value).map_err(|v| (v, TableFull))?;
        // The slab hands out no slot a wr_id cannot name, so this encodes.
        match crate::wrid::WrId::encode(crate::wrid::Kind::Recv, key.slot, key.gen) {
            Ok(id) => Ok(id),
            Err(_) => match self.slab.remove(key) {
                Some(v) => Err((v, TableFull)),
                None => unreachable!("inserted just above"),
            },
        }
    }

    /// Takes out the entry posted under `wr_id`, if that post is the current one.
    pub fn take(&mut self, wr_id: u64) -> Option<T> {
        let id = crate::wrid::WrId::decode(wr_id).filter(|id| id.kind == crate::wrid::Kind::Recv)?;
        self.slab.remove(Key { slot: id.slot, gen: id.gen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut s = GenSlab::new();
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_eq!((s.len(), s.get(a), s.get(b)), (2, Some(&"a"), Some(&"b")));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "taken once");
        assert_eq!(s.get(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_reused_slot_is_not_found_by_its_old_key() {
        let mut s = GenSlab::new();
        let old = s.insert(1).unwrap();
        s.remove(old).unwrap();
        let new = s.insert(2).unwrap();
        assert_eq!(new.slot, old.slot, "the slot is reused");
        assert_ne!(new.gen, old.gen);
        // A stale completion for the first use: ignored, and the current entry stays.
        assert_eq!(s.get(old), None);
        assert_eq!(s.get_mut(old), None);
        assert_eq!(s.remove(old), None);
        assert_eq!(s.get(new), Some(&2));
        assert_eq!(s.remove(new), Some(2));
    }

    #[test]
    fn keys_where_finds_current_entries() {
        let mut s = GenSlab::new();
        let keys: Vec<Key> = (0..10).map(|i| s.insert(i).unwrap()).collect();
        s.remove(keys[4]).unwrap();
        let even = s.keys_where(|v| v % 2 == 0);
        assert_eq!(even, vec![keys[0], keys[2], keys[6], keys[8]]);
        for k in even {
            s.remove(k).unwrap();
        }
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn a_posted_entry_comes_back_once_and_only_for_its_current_post() {
        let mut t = PostedTable::default();
        let first = t.enter("chunk 7").unwrap();
        assert_eq!(t.take(first), Some("chunk 7"));
        assert_eq!(t.take(first), None, "a second completion gives nothing back");
        // Posted again (under the same slot): the earlier wr_id is stale now.
        let second = t.enter("chunk 7").unwrap();
        assert_ne!(first, second);
        assert_eq!(t.take(first), None, "stale completion ignored");
        assert_eq!(t.len(), 1);
        assert_eq!(t.take(second), Some("chunk 7"));
        assert!(t.is_empty());
    }

    #[test]
    fn posted_table_ignores_other_kinds_and_unknown_slots() {
        let mut t = PostedTable::default();
        let id = t.enter(1u8).unwrap();
        let slot = crate::wrid::WrId::decode(id).unwrap().slot;
        let as_send = crate::wrid::WrId::encode(crate::wrid::Kind::Send, slot, 0).unwrap();
        assert_eq!(t.take(as_send), None);
        assert_eq!(t.take(crate::wrid::WrId::encode(crate::wrid::Kind::Recv, 99, 0).unwrap()), None);
        assert_eq!(t.take(0), None);
        assert_eq!(t.take(id), Some(1));
    }

    #[test]
    fn posted_table_is_as_large_as_what_is_posted_at_once() {
        let mut t = PostedTable::default();
        for round in 0..1000u32 {
            let ids: Vec<u64> = (0..16).map(|i| t.enter(round * 16 + i).unwrap()).collect();
            for (i, id) in ids.into_iter().enumerate() {
                assert_eq!(t.take(id), Some(round * 16 + i as u32));
            }
        }
        assert!(t.slab.entries.len() <= 16, "{} slots", t.slab.entries.len());
    }

    #[test]
    fn many_reuses_never_alias() {
        let mut s = GenSlab::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let k = s.insert(i).unwrap();
            assert!(seen.insert(k), "key {k:?} handed out twice");
            if i % 3 != 0 {
                s.remove(k).unwrap();
            }
        }
    }
}
