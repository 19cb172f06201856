//! Merging input partitions into one sequence in source commit order, independent of how the
//! partitions interleave when consumed.
//!
//! Each input (a Kafka partition, or an archived one) delivers records whose [`Position`]s do not
//! decrease, except for re-deliveries of records already seen (the CDC is at-least-once). An
//! input's *frontier* is a position that every record it may still deliver is at or after: the
//! position of its last record, raised by progress marks (the CDC's heartbeat says every
//! transaction committed before a position is in Kafka; once an input has been consumed up to the
//! end offset read after that heartbeat, nothing earlier can follow) or by the end of a finite
//! input.
//!
//! A record is released when its position is at or below the minimum frontier of all inputs, in
//! position order. Records with the same position may be released in any order: they are rows of
//! one multi-row write, whose order does not matter to the core. A record at a position below the
//! last released one is a re-delivery and is dropped. The released sequence is therefore the same
//! for every interleaving of the inputs.
//!
//! Memory: records wait in per-input queues until released. The runtime pauses an input whose
//! queue is long, except an input that holds the minimum frontier (pausing it would stall).
//!
//! Cost: a release is O(log inputs) (a heap of the queues' heads); the minimum frontier is
//! recomputed only after an input's frontier changed.

use crate::event::Position;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Identifies an input: a topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct InputName {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug)]
struct Buffered<T> {
    offset: i64,
    position: Position,
    item: T,
}

#[derive(Debug)]
struct Input<T> {
    name: InputName,
    frontier: Option<Position>,
    queue: VecDeque<Buffered<T>>,
    /// Offset of the next record this input will deliver.
    next_offset: i64,
    /// Progress marks waiting for the input to be consumed up to their offset.
    marks: Vec<(i64, Position)>,
}

/// What [`Merger::push`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Below the last released position: a re-delivery, dropped.
    Duplicate,
}

/// The merge of all inputs. Pure: no I/O, no clock.
#[derive(Debug)]
pub struct Merger<T> {
    inputs: Vec<Input<T>>,
    last_released: Option<Position>,
    duplicates: u64,
    /// The position of each non-empty queue's head, with its input: exactly one entry per
    /// non-empty queue (the lowest input first among equal positions).
    heads: BinaryHeap<Reverse<(Position, usize)>>,
    /// [`Merger::frontier`] as last computed; `None` after a frontier changed.
    frontier: std::cell::Cell<Option<Option<Position>>>,
}

impl<T> Default for Merger<T> {
    fn default() -> Self {
        Merger::new(None)
    }
}

impl<T> Merger<T> {
    /// A merger that continues after `last_released` (from a checkpoint), or from the start.
    pub fn new(last_released: Option<Position>) -> Merger<T> {
        Merger {
            inputs: Vec::new(),
            last_released,
            duplicates: 0,
            heads: BinaryHeap::new(),
            frontier: std::cell::Cell::new(None),
        }
    }

    /// Registers an input that will deliver records from `offset` on. Returns its index.
    pub fn add_input(&mut self, name: InputName, offset: i64) -> usize {
        self.inputs.push(Input {
            name,
            frontier: None,
            queue: VecDeque::new(),
            next_offset: offset,
            marks: Vec::new(),
        });
        self.frontier.set(None);
        self.inputs.len() - 1
    }

    pub fn inputs(&self) -> impl Iterator<Item = &InputName> {
        self.inputs.iter().map(|i| &i.name)
    }

    /// The input's record at `offset`, at `position`.
    pub fn push(&mut self, input: usize, offset: i64, position: Position, item: T) -> Pushed {
        self.consumed(input, offset);
        let inp = &mut self.inputs[input];
        let raised = inp.frontier.map_or(position, |f| f.max(position));
        if inp.frontier != Some(raised) {
            inp.frontier = Some(raised);
            self.frontier.set(None);
        }
        if self.last_released.is_some_and(|last| position < last) {
            self.duplicates += 1;
            return Pushed::Duplicate;
        }
        if inp.queue.is_empty() {
            self.heads.push(Reverse((position, input)));
        }
        inp.queue.push_back(Buffered { offset, position, item });
        Pushed::Queued
    }

    /// A record at `offset` that carries no position (a tombstone, a parked poison record):
    /// only the consumed offset moves.
    pub fn skip(&mut self, input: usize, offset: i64) {
        self.consumed(input, offset);
    }

    fn consumed(&mut self, input: usize, offset: i64) {
        let inp = &mut self.inputs[input];
        inp.next_offset = inp.next_offset.max(offset + 1);
        if !inp.marks.is_empty() {
            Self::apply_marks(inp);
            self.frontier.set(None);
        }
    }

    fn apply_marks(inp: &mut Input<T>) {
        let next = inp.next_offset;
        let mut raised = inp.frontier;
        inp.marks.retain(|(end, at)| {
            if next >= *end {
                raised = Some(raised.map_or(*at, |f| f.max(*at)));
                false
            } else {
                true
            }
        });
        inp.frontier = raised;
    }

    /// Progress mark: once the input has delivered every record below `end_offset`, every record
    /// it delivers afterwards is at or after `at`.
    pub fn mark(&mut self, input: usize, end_offset: i64, at: Position) {
        let inp = &mut self.inputs[input];
        inp.marks.push((end_offset, at));
        Self::apply_marks(inp);
        self.frontier.set(None);
    }

    /// The input has nothing more to deliver (end of an archived input).
    pub fn finish(&mut self, input: usize) {
        let max = Position { commit: u64::MAX, change: u64::MAX, table: u8::MAX };
        self.inputs[input].frontier = Some(max);
        self.frontier.set(None);
    }

    /// The position up to which records can be released: the minimum frontier. `None` while an
    /// input has told nothing yet.
    pub fn frontier(&self) -> Option<Position> {
        if let Some(known) = self.frontier.get() {
            return known;
        }
        let min = self.inputs.iter().map(|i| i.frontier).try_fold(None::<Position>, |acc, f| {
            let f = f?;
            Some(Some(acc.map_or(f, |a| a.min(f))))
        });
        let min = min.flatten();
        self.frontier.set(Some(min));
        min
    }

    /// Releases the next record at or below the frontier (see the module documentation):
    /// `(input, item)`.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let frontier = self.frontier()?;
        loop {
            let &Reverse((position, index)) = self.heads.peek()?;
            if position > frontier {
                return None;
            }
            self.heads.pop();
            let queue = &mut self.inputs[index].queue;
            let b = queue.pop_front().expect("a head is a queued record");
            if let Some(next) = queue.front() {
                self.heads.push(Reverse((next.position, index)));
            }
            if self.last_released.is_some_and(|last| b.position < last) {
                self.duplicates += 1;
                continue;
            }
            self.last_released = Some(b.position);
            return Some((index, b.item));
        }
    }

    pub fn last_released(&self) -> Option<Position> {
        self.last_released
    }

    /// Re-deliveries dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Where each input must resume so that no unreleased record is lost: the offset of its first
    /// queued record, or the next offset to consume.
    pub fn resume_offsets(&self) -> Vec<(InputName, i64)> {
        self.inputs
            .iter()
            .map(|i| (i.name.clone(), i.queue.front().map_or(i.next_offset, |b| b.offset)))
            .collect()
    }

    pub fn queued(&self, input: usize) -> usize {
        self.inputs[input].queue.len()
    }

    pub fn queued_total(&self) -> usize {
        self.inputs.iter().map(|i| i.queue.len()).sum()
    }

    pub fn next_offset(&self, input: usize) -> i64 {
        self.inputs[input].next_offset
    }

    pub fn input_frontier(&self, input: usize) -> Option<Position> {
        self.inputs[input].frontier
    }

    /// Whether the input holds the minimum frontier (or has told nothing): it must keep being
    /// consumed for anything to be released.
    pub fn is_blocking(&self, input: usize) -> bool {
        match (self.inputs[input].frontier, self.frontier()) {
            (None, _) => true,
            (Some(f), Some(min)) => f <= min,
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(commit: u64, change: u64) -> Position {
        Position { commit, change, table: 0 }
    }

    fn name(t: &str) -> InputName {
        InputName { topic: t.into(), partition: 0 }
    }

    #[test]
    fn releases_only_what_every_input_has_passed() {
        let mut m = Merger::new(None);
        let a = m.add_input(name("a"), 0);
        let b = m.add_input(name("b"), 0);
        m.push(a, 0, p(10, 1), "a10");
        m.push(a, 1, p(30, 3), "a30");
        assert_eq!(m.pop(), None, "b has told nothing");
        m.push(b, 0, p(20, 2), "b20");
        assert_eq!(m.pop(), Some((a, "a10")));
        // b20 is b's frontier: b can still deliver more at 20 (a multi-row write), in any order.
        assert_eq!(m.pop(), Some((b, "b20")));
        assert_eq!(m.pop(), None, "a30 waits until b passes 30");
        assert_eq!(m.resume_offsets(), vec![(name("a"), 1), (name("b"), 1)]);
        // A heartbeat: everything committed before 40 is in Kafka, b's end offset was 1.
        m.mark(b, 1, p(40, 0));
        assert_eq!(m.pop(), Some((a, "a30")));
        assert_eq!(m.pop(), None);
        // A re-delivery of something released is dropped.
        assert_eq!(m.push(a, 2, p(10, 1), "dup"), Pushed::Duplicate);
        assert_eq!(m.duplicates(), 1);
        assert_eq!(m.resume_offsets(), vec![(name("a"), 3), (name("b"), 1)]);
    }

    #[test]
    fn marks_wait_for_the_end_offset() {
        let mut m: Merger<&str> = Merger::new(None);
        let a = m.add_input(name("a"), 5);
        m.mark(a, 7, p(50, 0));
        assert_eq!(m.frontier(), None);
        m.skip(a, 5);
        assert_eq!(m.frontier(), None);
        m.skip(a, 6);
        assert_eq!(m.frontier(), Some(p(50, 0)));
        assert!(m.is_blocking(a));
    }
}
