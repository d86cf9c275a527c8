//! Re-deliveries and update ids for platforms that have no increasing update id of their own
//! (Slack, WhatsApp, Signal, iMessage): each accepted message gets one from its account, never
//! below the inbox's mark, and the keys of recent messages (an event id, a message id) are
//! remembered, bounded, so a platform's retry of a delivery is recognised and handled once.

use std::collections::{HashSet, VecDeque};

/// Keys remembered per account by default.
pub const SEEN: usize = 4096;

/// Re-deliveries recognised, and the update ids handed out, for one account.
pub struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
    /// The last update id handed out (never below the inbox's mark).
    last: i64,
}

impl Seen {
    /// `mark`: the inbox's highest update id (0 for none); `cap`: keys remembered.
    pub fn new(mark: i64, cap: usize) -> Self {
        Self { keys: HashSet::new(), order: VecDeque::new(), cap: cap.max(1), last: mark }
    }

    /// Whether any of `keys` was seen.
    pub fn contains(&self, keys: &[String]) -> bool {
        keys.iter().any(|k| self.keys.contains(k))
    }

    /// Whether `key` was seen.
    pub fn has(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Remembers `keys`, forgetting the oldest beyond the bound.
    pub fn insert(&mut self, keys: Vec<String>) {
        for k in keys {
            if self.keys.insert(k.clone()) {
                self.order.push_back(k);
            }
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// A fresh update id: increasing, and after a restart above every id admitted before
    /// (microseconds since the epoch, or one past the last).
    pub fn next_update(&mut self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.last = now.max(self.last.saturating_add(1));
        self.last
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_ids_increase_past_the_mark_and_keys_stay_bounded() {
        let mut s = Seen::new(i64::MAX - 5, SEEN);
        let a = s.next_update();
        assert!(a > i64::MAX - 5 && s.next_update() > a);
        let mut s = Seen::new(0, SEEN);
        s.insert((0..SEEN + 10).map(|i| i.to_string()).collect());
        assert!(s.len() == SEEN && !s.contains(&["0".into()]) && s.contains(&[format!("{}", SEEN + 9)]));
        assert!(s.has(&(SEEN + 9).to_string()));
    }
}
