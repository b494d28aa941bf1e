//! A fixed-capacity FIFO that drops its oldest item when full, so an output that is away (broker
//! down, cable pulled) holds the newest captions without growing memory.
//!
//! Not `heapless::Deque`: the capacity is the user's (`[serial] queue`, `[mqtt] buffer`, up to a
//! million), known at start-up, not at compile time; the only other fixed-size buffer, the frame
//! slot, holds one frame (an `Option`).

use std::collections::VecDeque;

pub struct DropOldest<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DropOldest { items: VecDeque::with_capacity(capacity), capacity }
    }

    /// Appends `item`; returns the item dropped to make room, if any.
    pub fn push(&mut self, item: T) -> Option<T> {
        let dropped = if self.items.len() == self.capacity { self.items.pop_front() } else { None };
        self.items.push_back(item);
        dropped
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        self.items.remove(i)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::DropOldest;

    #[test]
    fn keeps_the_newest_items_and_reports_what_it_drops() {
        let mut q = DropOldest::new(3);
        let dropped: Vec<Option<i32>> = (1..=5).map(|i| q.push(i)).collect();
        assert_eq!(dropped, vec![None, None, None, Some(1), Some(2)]);
        assert_eq!(q.len(), 3);
        assert_eq!((q.pop(), q.pop(), q.pop(), q.pop()), (Some(3), Some(4), Some(5), None));
    }
}
