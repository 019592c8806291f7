//! Ordering-aware work queue: items with the same ordering key run one at a time, in arrival
//! order; items without a key (unordered) run as soon as a slot is free.
//!
//! Invariant: at most one item per key is ready or running at any time. With a weight (bytes),
//! the queued bytes are the weights of the items not yet started.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub struct Scheduler<K, T> {
    ready: VecDeque<(Option<K>, T)>,
    waiting: HashMap<K, VecDeque<T>>,
    active: HashSet<K>,
    running: usize,
    concurrency: usize,
    held: usize,
    weigh: fn(&T) -> usize,
    queued_bytes: usize,
}

impl<K: Hash + Eq + Clone, T> Scheduler<K, T> {
    pub fn new(concurrency: usize) -> Self {
        Scheduler {
            ready: VecDeque::new(),
            waiting: HashMap::new(),
            active: HashSet::new(),
            running: 0,
            concurrency,
            held: 0,
            weigh: |_| 0,
            queued_bytes: 0,
        }
    }

    /// Counts each item's weight (bytes) while it waits to start: see [`Self::queued_bytes`].
    pub fn weighing(mut self, weigh: fn(&T) -> usize) -> Self {
        self.weigh = weigh;
        self
    }

    pub fn push(&mut self, key: Option<K>, item: T) {
        self.held += 1;
        self.queued_bytes += (self.weigh)(&item);
        match key {
            None => self.ready.push_back((None, item)),
            Some(k) if self.active.contains(&k) => self.waiting.entry(k).or_default().push_back(item),
            Some(k) => {
                self.active.insert(k.clone());
                self.ready.push_back((Some(k), item));
            }
        }
    }

    /// The next item to start, if a slot is free; the caller must call [`Self::finish`] with
    /// its key when it ends.
    pub fn start_next(&mut self) -> Option<(Option<K>, T)> {
        if self.running >= self.concurrency {
            return None;
        }
        let next = self.ready.pop_front()?;
        self.running += 1;
        self.queued_bytes -= (self.weigh)(&next.1);
        Some(next)
    }

    pub fn finish(&mut self, key: Option<&K>) {
        self.running = self.running.saturating_sub(1);
        self.held = self.held.saturating_sub(1);
        let Some(k) = key else { return };
        match self.waiting.get_mut(k).and_then(VecDeque::pop_front) {
            Some(item) => {
                if self.waiting.get(k).is_some_and(VecDeque::is_empty) {
                    self.waiting.remove(k);
                }
                self.ready.push_back((Some(k.clone()), item));
            }
            None => {
                self.active.remove(k);
            }
        }
    }

    /// Drops every item not yet started for which `drop` is true (revoked partitions,
    /// shutdown); returns how many.
    pub fn discard(&mut self, mut drop: impl FnMut(&T) -> bool) -> usize {
        let before = self.held;
        let (weigh, mut dropped_bytes) = (self.weigh, 0);
        // Weighs what is dropped; an item is dropped at its first `true`.
        let mut drop = |t: &T| {
            let d = drop(t);
            if d {
                dropped_bytes += weigh(t);
            }
            d
        };
        let mut kept = VecDeque::new();
        for (k, item) in self.ready.drain(..) {
            if drop(&item) {
                self.held -= 1;
                if let Some(k) = k {
                    // Promote the key's next waiting item, if kept.
                    self.active.remove(&k);
                    if let Some(q) = self.waiting.remove(&k) {
                        for w in q {
                            if drop(&w) {
                                self.held -= 1;
                            } else if self.active.insert(k.clone()) {
                                kept.push_back((Some(k.clone()), w));
                            } else {
                                self.waiting.entry(k.clone()).or_default().push_back(w);
                            }
                        }
                    }
                }
            } else {
                kept.push_back((k, item));
            }
        }
        self.ready = kept;
        for q in self.waiting.values_mut() {
            let n = q.len();
            q.retain(|w| !drop(w));
            self.held -= n - q.len();
        }
        self.waiting.retain(|_, q| !q.is_empty());
        self.queued_bytes -= dropped_bytes;
        before - self.held
    }

    /// Items held: running, ready and waiting.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// The weights of the items waiting to start (ready or behind their key).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_runs_in_order_one_at_a_time() {
        let mut s: Scheduler<&str, u32> = Scheduler::new(10);
        s.push(Some("a"), 1);
        s.push(Some("a"), 2);
        s.push(Some("b"), 3);
        s.push(None, 4);
        let started: Vec<u32> = std::iter::from_fn(|| s.start_next().map(|(_, t)| t)).collect();
        assert_eq!(started, vec![1, 3, 4]); // 2 waits behind 1
        s.finish(Some(&"a"));
        assert_eq!(s.start_next().map(|(_, t)| t), Some(2));
        assert_eq!(s.held(), 3);
    }

    #[test]
    fn concurrency_is_bounded() {
        let mut s: Scheduler<u8, u32> = Scheduler::new(2);
        (0..5).for_each(|i| s.push(None, i));
        assert!(s.start_next().is_some() && s.start_next().is_some());
        assert!(s.start_next().is_none());
        s.finish(None);
        assert!(s.start_next().is_some());
    }

    #[test]
    fn discard_drops_unstarted_items_only() {
        let mut s: Scheduler<u8, u32> = Scheduler::new(1);
        s.push(Some(1), 10);
        s.push(Some(1), 11);
        s.push(Some(2), 20);
        let (_, first) = s.start_next().unwrap();
        assert_eq!(first, 10);
        assert_eq!(s.discard(|t| *t == 11 || *t == 20), 2);
        assert_eq!(s.held(), 1);
        s.finish(Some(&1));
        assert!(s.start_next().is_none());
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn queued_bytes_count_the_items_not_yet_started() {
        let mut s: Scheduler<u8, u32> = Scheduler::new(1).weighing(|t| *t as usize);
        s.push(Some(1), 10);
        s.push(Some(1), 11);
        s.push(Some(2), 20);
        s.push(None, 30);
        assert_eq!(s.queued_bytes(), 71);
        assert_eq!(s.start_next().map(|(_, t)| t), Some(10));
        assert_eq!(s.queued_bytes(), 61, "a started item no longer counts");
        assert_eq!(s.discard(|t| *t == 11 || *t == 30), 2);
        assert_eq!(s.queued_bytes(), 20, "dropped items no longer count");
        s.finish(Some(&1));
        assert_eq!(s.start_next().map(|(_, t)| t), Some(20));
        assert_eq!((s.queued_bytes(), s.held()), (0, 1));
    }
}
