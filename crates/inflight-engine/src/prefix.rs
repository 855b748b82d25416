//! The shared prompt prefix: jobs rendered from one template begin with the same tokens (the system message,
//! the template's fixed text). Those tokens are prefilled once, into a sequence of their own, and each new
//! job that starts with them gets a copy of their KV cells instead of computing them again.
//!
//! The prefix is found, not declared: when a job's prompt shares at least [`MIN_SHARED`] leading tokens with
//! the job before it, those tokens become the prefix. Jobs that match a prefix still being prefilled wait for
//! it (one decode call), so a burst of jobs at the start pays for the preamble once, not once each.
//! Pure logic, no llama.cpp: the worker carries out what [`PrefixCache::plan`] says.

/// Fewer shared tokens than this are not worth a copy.
pub(crate) const MIN_SHARED: usize = 16;

/// What to do with a new job's prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Copy the first `n` positions from the prefix's sequence, prefill the rest.
    Copy(usize),
    /// The prefix this job starts with is being prefilled; ask again when it is ready.
    Wait,
    /// Start prefilling these tokens as the new prefix (dropping the old one), then wait for it.
    Build(Vec<i32>),
    /// No useful prefix: prefill the whole prompt.
    Own,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    Building,
    Ready,
}

#[derive(Debug)]
pub(crate) struct PrefixCache {
    tokens: Vec<i32>,
    state: State,
    last: Vec<i32>,
}

impl Default for PrefixCache {
    fn default() -> PrefixCache {
        PrefixCache { tokens: Vec::new(), state: State::Empty, last: Vec::new() }
    }
}

/// How many leading tokens `a` and `b` share.
pub(crate) fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// What to do for a job whose prompt is `prompt`. A job always keeps at least its last token to compute
    /// itself (its logits start the generation).
    pub fn plan(&mut self, prompt: &[i32]) -> Plan {
        let usable = |n: usize| n.min(prompt.len().saturating_sub(1));
        let with_prefix = usable(common_prefix(prompt, &self.tokens));
        let plan = match self.state {
            State::Ready if with_prefix >= MIN_SHARED => Plan::Copy(with_prefix),
            State::Building if with_prefix >= MIN_SHARED => Plan::Wait,
            State::Building => Plan::Own,
            State::Empty | State::Ready => {
                let with_last = usable(common_prefix(prompt, &self.last));
                if with_last >= MIN_SHARED && with_last > with_prefix {
                    self.tokens = prompt[..with_last].to_vec();
                    self.state = State::Building;
                    Plan::Build(self.tokens.clone())
                } else if with_prefix >= MIN_SHARED {
                    Plan::Copy(with_prefix)
                } else {
                    Plan::Own
                }
            }
        };
        self.last = prompt.to_vec();
        plan
    }

    /// How many leading tokens `prompt` shares with the prefix, once it is ready to copy (0 before).
    pub fn ready_common(&self, prompt: &[i32]) -> usize {
        if self.state == State::Ready {
            common_prefix(prompt, &self.tokens)
        } else {
            0
        }
    }

    /// The prefix's sequence has prefilled all its tokens.
    pub fn ready(&mut self) {
        if self.state == State::Building {
            self.state = State::Ready;
        }
    }

    /// Whether jobs are waiting on a prefix being built.
    pub fn building(&self) -> bool {
        self.state == State::Building
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(preamble: usize, own: i32) -> Vec<i32> {
        (0..preamble as i32).chain([1000 + own, 2000 + own]).collect()
    }

    #[test]
    fn the_second_job_of_a_template_builds_the_prefix_and_later_ones_copy_it() {
        let mut p = PrefixCache::default();
        assert_eq!(p.plan(&prompt(300, 1)), Plan::Own, "one job shows no shared prefix yet");
        let Plan::Build(tokens) = p.plan(&prompt(300, 2)) else { panic!("the second job builds it") };
        assert_eq!(tokens.len(), 300);
        assert_eq!(p.plan(&prompt(300, 3)), Plan::Wait, "a burst waits for the prefix being built");
        p.ready();
        assert_eq!(p.plan(&prompt(300, 2)), Plan::Copy(300), "the builder itself copies once it is ready");
        assert_eq!(p.plan(&prompt(300, 4)), Plan::Copy(300));
    }

    #[test]
    fn short_shared_starts_are_not_worth_a_prefix() {
        let mut p = PrefixCache::default();
        p.plan(&prompt(MIN_SHARED - 1, 1));
        assert_eq!(p.plan(&prompt(MIN_SHARED - 1, 2)), Plan::Own);
    }

    #[test]
    fn a_job_keeps_its_last_token_even_when_it_is_all_prefix() {
        let mut p = PrefixCache::default();
        let whole: Vec<i32> = (0..40).collect();
        p.plan(&whole);
        assert_eq!(p.plan(&whole), Plan::Build((0..39).collect()));
        p.ready();
        assert_eq!(p.plan(&whole), Plan::Copy(39));
    }

    #[test]
    fn a_new_template_replaces_a_ready_prefix_but_not_one_being_built() {
        let mut p = PrefixCache::default();
        p.plan(&prompt(100, 1));
        assert!(matches!(p.plan(&prompt(100, 2)), Plan::Build(_)));
        let other = |own| -> Vec<i32> { (500..600).chain([own]).collect() };
        assert_eq!(p.plan(&other(1)), Plan::Own, "jobs wait on the prefix being built: keep it");
        p.ready();
        assert!(matches!(p.plan(&other(2)), Plan::Build(t) if t.len() == 100), "the new template's prefix");
    }
}
