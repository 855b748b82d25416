//! The KV cache's cells and the context's sequence ids, handed out to jobs.
//!
//! Each admitted job reserves the cells it can ever use (its prompt plus `max_tokens`), so a decode call never
//! runs out of cells halfway: a job waits for room instead, and one that could never fit is refused up front.
//! Pure bookkeeping, no llama.cpp.

/// A job's sequence id and its reserved cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: i32,
    pub cells: u32,
}

#[derive(Debug)]
pub(crate) struct Budget {
    total: u32,
    reserved: u32,
    free: Vec<i32>,
}

impl Budget {
    /// `cells` KV cells and sequence ids `0..sequences`.
    pub fn new(cells: u32, sequences: usize) -> Budget {
        Budget { total: cells, reserved: 0, free: (0..sequences as i32).rev().collect() }
    }

    /// A sequence id and `cells` cells, if both are free now.
    pub fn admit(&mut self, cells: u32) -> Option<Slot> {
        if self.reserved + cells > self.total {
            return None;
        }
        let id = self.free.pop()?;
        self.reserved += cells;
        Some(Slot { id, cells })
    }

    /// Reserves cells without a sequence id (the shared prefix's own sequence).
    pub fn hold(&mut self, cells: u32) -> bool {
        if self.reserved + cells > self.total {
            return false;
        }
        self.reserved += cells;
        true
    }

    /// Gives back cells taken with [`Budget::hold`].
    pub fn unhold(&mut self, cells: u32) {
        self.reserved -= cells.min(self.reserved);
    }

    /// Gives back a job's id and cells.
    pub fn release(&mut self, slot: Slot) {
        self.unhold(slot.cells);
        self.free.push(slot.id);
    }

    #[cfg(test)]
    pub fn in_use(&self) -> u32 {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_wait_for_cells_and_ids_and_get_them_back() {
        let mut b = Budget::new(100, 2);
        let a = b.admit(60).unwrap();
        assert_eq!(b.admit(50), None, "only 40 cells left");
        let c = b.admit(40).unwrap();
        assert_ne!(a.id, c.id);
        assert_eq!(b.admit(0), None, "no sequence id left");
        b.release(a);
        assert_eq!(b.in_use(), 40);
        let d = b.admit(60).unwrap();
        assert_eq!(d.id, a.id, "the freed id is reused");
    }

    #[test]
    fn held_cells_count_against_jobs() {
        let mut b = Budget::new(100, 4);
        assert!(b.hold(70));
        assert_eq!(b.admit(40), None);
        b.unhold(70);
        assert!(b.admit(40).is_some());
    }
}
