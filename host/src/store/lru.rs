//! The bounded caches of the store (open sessions, pack indexes): least recently used first out,
//! and an entry in use (its `Arc` cloned by a caller) is never dropped, so two copies of one
//! session's or pack's state never exist at once.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

pub(super) struct Lru<K, V> {
    slots: HashMap<K, (Arc<V>, u64)>,
    /// Least recently used first.
    by_use: BTreeMap<u64, K>,
    next_use: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(super) fn new() -> Self {
        Self { slots: HashMap::new(), by_use: BTreeMap::new(), next_use: 0 }
    }

    /// The entry `id` (made by `make` when missing), marked most recently used; then, while
    /// `over(len)` says the cache is past its bound, idle entries are dropped, oldest first
    /// (each entry looked at once; entries in use are skipped).
    pub(super) fn get(&mut self, id: K, make: impl FnOnce() -> V, over: impl Fn(usize) -> bool) -> Arc<V> {
        let used = self.next_use;
        self.next_use += 1;
        let slot = match self.slots.get_mut(&id) {
            Some((slot, at)) => {
                self.by_use.remove(at);
                *at = used;
                slot.clone()
            }
            None => {
                let slot = Arc::new(make());
                self.slots.insert(id.clone(), (slot.clone(), used));
                slot
            }
        };
        self.by_use.insert(used, id);
        let mut looked = 0;
        while over(self.slots.len()) && looked < self.slots.len() {
            looked += 1;
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            let idle = self.slots.get(&oldest).is_some_and(|(s, _)| Arc::strong_count(s) == 1);
            if idle {
                self.slots.remove(&oldest);
            } else {
                let at = self.next_use;
                self.next_use += 1;
                if let Some((_, u)) = self.slots.get_mut(&oldest) {
                    *u = at;
                }
                self.by_use.insert(at, oldest);
            }
        }
        slot
    }

    pub(super) fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.slots.retain(|k, _| keep(k));
        self.by_use.retain(|_, k| keep(k));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}
