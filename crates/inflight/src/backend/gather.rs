//! When the packer sends what it has gathered: a pure state machine over time given as an argument, so its
//! rules are unit-tested in synthetic time (the packer's task, `pack.rs`, is its one owner at run time).
//!
//! Inputs that may share a request (same endpoint, same body but for `input`) gather in a group. A group is sent
//! when it is full (`max` inputs, or `max_bytes` of input text), or when fewer than [`KEEP_IN_FLIGHT`] of its
//! requests are in flight and no input has joined it for [`QUIET`] (or its first has waited [`PATIENCE`]).
//! So while the server has two requests of a group, new inputs wait and pack into the next one, and the number of
//! inputs per request follows the number of inputs in flight (about half of them each), which the concurrency
//! controller tunes; when the server is idle, nothing waits longer than it takes a burst of inputs to arrive.
//! Two in flight, not one: the server works on one while the other crosses the network, and one request's
//! inputs come back together, so new inputs arrive in bursts that the quiet wait gathers.

use std::collections::HashMap;
use std::time::Duration;

/// Requests of a group kept in flight before new inputs wait for one to come back.
pub const KEEP_IN_FLIGHT: usize = 2;
/// How long a group that could go waits for more inputs after the last one joined: the spread of a burst of
/// inputs released together (their attempts committed in one group by the store's writer).
pub const QUIET: Duration = Duration::from_millis(2);
/// The longest a group that could go waits for its first input's company, however steadily inputs trickle in.
pub const PATIENCE: Duration = Duration::from_millis(10);

/// A group to send now: its key and the ids of its inputs, in the order they joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    /// The group's key (the request body without its `input`).
    pub key: String,
    /// The inputs' ids.
    pub ids: Vec<u64>,
}

#[derive(Debug, Default)]
struct Group {
    ids: Vec<u64>,
    bytes: usize,
    first: Duration,
    last: Duration,
    in_flight: usize,
}

/// The gathering rules, for every group at once.
#[derive(Debug)]
pub struct Gather {
    max: usize,
    max_bytes: usize,
    groups: HashMap<String, Group>,
}

impl Gather {
    /// Groups of at most `max` inputs and `max_bytes` of input text (one input alone may be larger).
    pub fn new(max: usize, max_bytes: usize) -> Gather {
        Gather { max: max.max(1), max_bytes, groups: HashMap::new() }
    }

    /// The most inputs a request carries now.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Lowers the most inputs a request may carry (a server refused a larger one as too large).
    pub fn cap(&mut self, max: usize) {
        self.max = self.max.min(max.max(1));
    }

    /// Input `id` of `bytes` bytes joins group `key` at `now`; returns what must go now (a full group; or the
    /// group as it was, when this input would take it over `max_bytes`).
    pub fn add(&mut self, now: Duration, key: &str, id: u64, bytes: usize) -> Vec<Flush> {
        let mut out = Vec::new();
        let group = self.groups.entry(key.to_owned()).or_default();
        if !group.ids.is_empty() && group.bytes + bytes > self.max_bytes {
            out.push(take(key, group));
        }
        if group.ids.is_empty() {
            group.first = now;
        }
        group.ids.push(id);
        group.bytes += bytes;
        group.last = now;
        if group.ids.len() >= self.max || group.bytes >= self.max_bytes {
            out.push(take(key, group));
        }
        out
    }

    /// A request of group `key` came back at `now`: returns what may go now.
    pub fn done(&mut self, now: Duration, key: &str) -> Vec<Flush> {
        if let Some(group) = self.groups.get_mut(key) {
            group.in_flight = group.in_flight.saturating_sub(1);
        }
        self.due(now)
    }

    /// The groups that may go at `now`: under [`KEEP_IN_FLIGHT`] requests out, and quiet or patient enough.
    pub fn due(&mut self, now: Duration) -> Vec<Flush> {
        let mut out = Vec::new();
        for (key, group) in self.groups.iter_mut() {
            if ready_at(group).is_some_and(|at| at <= now) {
                out.push(take(key, group));
            }
        }
        // Groups nobody uses any more go, so a run over many models keeps no state for finished ones.
        self.groups.retain(|_, g| !g.ids.is_empty() || g.in_flight > 0);
        out
    }

    /// When [`Gather::due`] may next return something without a new input or answer (`None`: not before one).
    pub fn next_wake(&self) -> Option<Duration> {
        self.groups.values().filter_map(ready_at).min()
    }
}

/// When a group may go, if it may go before an answer comes back.
fn ready_at(group: &Group) -> Option<Duration> {
    if group.ids.is_empty() || group.in_flight >= KEEP_IN_FLIGHT {
        return None;
    }
    Some((group.last + QUIET).min(group.first + PATIENCE))
}

/// Empties `group` into a flush and counts its request in flight.
fn take(key: &str, group: &mut Group) -> Flush {
    group.in_flight += 1;
    group.bytes = 0;
    Flush { key: key.to_owned(), ids: std::mem::take(&mut group.ids) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sizes(flushes: &[Flush]) -> Vec<usize> {
        flushes.iter().map(|f| f.ids.len()).collect()
    }

    #[test]
    fn a_full_group_goes_at_once_and_one_input_a_request_never_waits() {
        let mut g = Gather::new(3, 1 << 20);
        assert!(g.add(ms(0), "k", 1, 10).is_empty());
        assert!(g.add(ms(0), "k", 2, 10).is_empty());
        assert_eq!(g.add(ms(0), "k", 3, 10), vec![Flush { key: "k".into(), ids: vec![1, 2, 3] }]);
        let mut one = Gather::new(1, 1 << 20);
        assert_eq!(sizes(&one.add(ms(0), "k", 1, 10)), vec![1]);
        assert_eq!(sizes(&one.add(ms(0), "k", 2, 10)), vec![1], "a request each, whatever is in flight");
    }

    #[test]
    fn an_idle_group_goes_once_its_burst_has_arrived() {
        let mut g = Gather::new(64, 1 << 20);
        for (i, at) in [0, 1, 2].into_iter().enumerate() {
            assert!(g.add(ms(at), "k", i as u64, 10).is_empty());
        }
        assert_eq!(g.next_wake(), Some(ms(2) + QUIET));
        assert!(g.due(ms(3)).is_empty(), "still within the quiet wait after the last input");
        assert_eq!(sizes(&g.due(ms(4))), vec![3]);
        assert!(g.due(ms(100)).is_empty(), "nothing left");
    }

    #[test]
    fn a_steady_trickle_waits_no_longer_than_the_patience() {
        let mut g = Gather::new(64, 1 << 20);
        let mut sent = Vec::new();
        for t in 0..12 {
            sent.extend(g.add(ms(t), "k", t, 10));
            sent.extend(g.due(ms(t)));
        }
        assert_eq!(sizes(&sent), vec![11], "inputs 1 ms apart never leave a quiet gap; the first waited 10 ms");
    }

    #[test]
    fn with_two_requests_out_inputs_gather_until_one_comes_back() {
        let mut g = Gather::new(64, 1 << 20);
        g.add(ms(0), "k", 0, 10);
        assert_eq!(sizes(&g.due(ms(5))), vec![1]);
        g.add(ms(5), "k", 1, 10);
        assert_eq!(sizes(&g.due(ms(10))), vec![1]);
        for id in 2..40 {
            g.add(ms(10 + id), "k", id, 10);
        }
        assert_eq!(g.next_wake(), None, "two in flight: nothing goes before an answer");
        assert!(g.due(ms(500)).is_empty());
        assert_eq!(sizes(&g.done(ms(500), "k")), vec![38], "an answer frees the gathered inputs at once");
    }

    #[test]
    fn groups_are_apart_and_bytes_bound_a_request() {
        let mut g = Gather::new(64, 100);
        assert!(g.add(ms(0), "a", 1, 60).is_empty());
        assert!(g.add(ms(0), "b", 2, 60).is_empty());
        let flushed = g.add(ms(0), "a", 3, 60);
        assert_eq!(flushed, vec![Flush { key: "a".into(), ids: vec![1] }], "the group as it was goes first");
        assert_eq!(sizes(&g.add(ms(0), "c", 4, 500)), vec![1], "an input larger than the bound goes alone");
        let mut due = g.due(ms(10));
        due.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            due.iter().map(|f| (f.key.as_str(), f.ids.clone())).collect::<Vec<_>>(),
            [("a", vec![3]), ("b", vec![2])]
        );
    }

    #[test]
    fn a_cap_learned_from_the_server_only_lowers_the_size() {
        let mut g = Gather::new(64, 1 << 20);
        g.cap(16);
        g.cap(32);
        assert_eq!(g.max(), 16);
        g.cap(0);
        assert_eq!(g.max(), 1);
    }
}
