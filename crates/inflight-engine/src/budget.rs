//! The context's sequences, handed out to jobs.
//!
//! Each sequence has its own KV cells (llama.cpp's per-sequence streams, as llama-server's slots have): a
//! sequence decodes exactly as it would alone, whatever else is in the batch. A job that needs more cells than
//! a sequence holds is refused up front; one that fits waits for a free sequence. Pure bookkeeping.
//!
//! The lowest free id is handed out first. llama.cpp splits a decode call over per-sequence streams into
//! micro-batches of *consecutive* sequence ids only, so a gap (sequences 0, 1 and 3 busy) costs an extra pass
//! over the model; filling the lowest gap first keeps the busy ids in one run.

use std::collections::BTreeSet;

/// A job's sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: i32,
}

#[derive(Debug)]
pub(crate) struct Budget {
    cells: u32,
    free: BTreeSet<i32>,
}

impl Budget {
    /// Sequence ids `0..sequences`, each with `cells` KV cells.
    pub fn new(cells: u32, sequences: usize) -> Budget {
        Budget { cells, free: (0..sequences as i32).collect() }
    }

    /// The most tokens one job may use.
    pub fn cells(&self) -> u32 {
        self.cells
    }

    /// A free sequence for a job of `need` tokens; `None` when all are busy (or it could never fit).
    pub fn admit(&mut self, need: u32) -> Option<Slot> {
        if need > self.cells {
            return None;
        }
        self.free.pop_first().map(|id| Slot { id })
    }

    /// Gives a job's sequence back.
    pub fn release(&mut self, slot: Slot) {
        self.free.insert(slot.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_wait_for_a_sequence_and_get_it_back() {
        let mut b = Budget::new(100, 2);
        let a = b.admit(60).unwrap();
        let c = b.admit(100).unwrap();
        assert_ne!(a.id, c.id);
        assert_eq!(b.admit(1), None, "both sequences busy");
        b.release(a);
        assert_eq!(b.admit(10).unwrap().id, a.id, "the freed sequence is reused");
    }

    #[test]
    fn the_lowest_free_sequence_goes_first_so_busy_ids_stay_consecutive() {
        let mut b = Budget::new(100, 4);
        let s: Vec<Slot> = (0..4).map(|_| b.admit(1).unwrap()).collect();
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
        b.release(s[3]);
        b.release(s[1]);
        assert_eq!(b.admit(1).unwrap().id, 1, "the gap is filled first");
    }

    #[test]
    fn a_job_larger_than_a_sequence_never_gets_one() {
        let mut b = Budget::new(100, 4);
        assert_eq!(b.admit(101), None);
    }
}
