//! Prefix-aware order: within each page of pending jobs (a bounded window, so memory stays flat), jobs whose
//! prompts share a long prefix are sent one after another, so a server's prefix cache (llama-server's slots and
//! its prompt cache, vLLM's and SGLang's prefix caches) still holds the shared part when the next one arrives.
//!
//! Sorting the page by its prompts' text does that: strings in lexicographic order put those with the longest
//! common prefix next to each other (a trie's walk), twenty questions about one document end up together, and
//! jobs sharing one instruction block keep it shared. Equal prompts keep their file order (a stable sort). The
//! output files stay in commit order; only the order of sending changes.
//!
//! Sorted neighbours whose common prefix is at least half the shorter prompt form a *family* (llama-server
//! reuses a slot's cache for a prompt by the same measure, its default `--slot-prompt-similarity` 0.5). The
//! window deals families over the requests in flight: the next job is the next of the first family with the
//! fewest in flight. Sending a family's questions all at once would have every slot prefill the same document
//! side by side (measured on llama-server: 0.68× file order with its prompt cache on); dealt, a family has one
//! question in flight while there are other families to send, and when it is answered the permit it frees is
//! taken by its next question, which the server gives to the idle slot: the one holding its document. Jobs that
//! share a long instruction block and differ after it are one family, sent as many at once as the level allows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::store::PendingJob;

/// The pending jobs claimed and not yet sent, in families, in the order they are to be sent.
pub struct Window {
    families: VecDeque<Family>,
    /// Families by shared prefix; otherwise each page is one family in store order.
    by_prefix: bool,
    flight: Arc<Mutex<Flight>>,
    /// The most families in flight at once: the requests the servers run at once (their slots), where they say.
    lanes: Option<usize>,
}

/// What the window and the jobs in flight share.
#[derive(Default)]
struct Flight {
    /// How many families have jobs in flight, those that left the window included.
    busy: usize,
    /// With one llama-server, the jobs in flight pinned to each of its slots (empty otherwise).
    load: Vec<usize>,
}

/// Jobs that share most of their prompt.
struct Family {
    jobs: VecDeque<PendingJob>,
    state: Arc<Mutex<FamilyState>>,
}

/// A family's jobs in flight and its slots.
#[derive(Default)]
struct FamilyState {
    in_flight: usize,
    /// The slots its pinned jobs in flight are on, one entry a job.
    on: Vec<usize>,
    /// The slot its last job went to (which still holds its prefix, unless another family's took it since).
    last: Option<usize>,
}

/// A job taken from the window and not yet sent: [`Window::put_back`] returns it to its place.
pub struct Picked {
    pub job: PendingJob,
    family: Arc<Mutex<FamilyState>>,
    flight: Arc<Mutex<Flight>>,
}

/// Counts a job as in flight for its family until dropped (when its request is over, before its permit goes
/// back, so the loop taking that permit sees the family free).
pub struct InFlight {
    family: Arc<Mutex<FamilyState>>,
    flight: Arc<Mutex<Flight>>,
    slot: Option<usize>,
}

impl InFlight {
    /// The server slot the job is pinned to (llama-server's `id_slot`), if any.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut flight = self.flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
        family.in_flight -= 1;
        if family.in_flight == 0 {
            flight.busy -= 1;
        }
        if let Some(s) = self.slot {
            if let Some(load) = flight.load.get_mut(s) {
                *load -= 1;
            }
            if let Some(i) = family.on.iter().position(|&o| o == s) {
                family.on.swap_remove(i);
            }
        }
    }
}

impl Picked {
    /// A job that belongs to no family (one handed back by a server that went away).
    pub fn alone(job: PendingJob) -> Picked {
        Picked { job, family: Arc::default(), flight: Arc::default() }
    }

    /// The job, now in flight. Where slots are pinned it goes to its family's slot (one its jobs in flight are
    /// on, else the one its last job went to, whose cache may still hold its prefix) while no other slot has
    /// fewer jobs, else to the slot with the fewest: families keep to their slots, and one family alone (a
    /// shared instruction block) spreads over them all.
    pub fn send(self) -> (PendingJob, InFlight) {
        let slot = {
            let mut flight = self.flight.lock().unwrap_or_else(|e| e.into_inner());
            let mut family = self.family.lock().unwrap_or_else(|e| e.into_inner());
            if family.in_flight == 0 {
                flight.busy += 1;
            }
            family.in_flight += 1;
            let load = &flight.load;
            let least = load.iter().copied().enumerate().min_by_key(|&(_, n)| n);
            let own = family.on.iter().copied().chain(family.last).filter(|&s| s < load.len()).min_by_key(|&s| load[s]);
            let slot = match (own, least) {
                (Some(s), Some((_, fewest))) if load[s] == fewest => Some(s),
                (_, least) => least.map(|(s, _)| s),
            };
            if let Some(s) = slot {
                flight.load[s] += 1;
                family.on.push(s);
                family.last = Some(s);
            }
            slot
        };
        (self.job, InFlight { family: self.family, flight: self.flight, slot })
    }
}

impl Window {
    /// An empty window; `by_prefix` groups each page into families, otherwise jobs go in store order.
    pub fn new(by_prefix: bool) -> Window {
        Window { families: VecDeque::new(), by_prefix, flight: Arc::default(), lanes: None }
    }

    /// Sets the most families in flight at once to the servers' lanes (`None`: unknown, no bound). With more
    /// requests in flight than lanes, a server queues the rest; a queued question of another document would
    /// take the slot that holds this one's (on a server whose prompt cache holds only its slots, each would
    /// prefill its document again), so the requests beyond the lanes go to families already in flight.
    ///
    /// With `pin` (one llama-server), each family in flight is also given a slot of its own (`id_slot`): the
    /// server then keeps a family's queued questions for the slot that holds its document.
    pub fn set_lanes(&mut self, lanes: Option<usize>, pin: bool) {
        self.lanes = lanes;
        let slots = if pin && self.by_prefix { lanes.unwrap_or(0) } else { 0 };
        let mut flight = self.flight.lock().unwrap_or_else(|e| e.into_inner());
        if flight.load.len() != slots {
            flight.load.resize(slots, 0);
        }
    }

    /// Takes in a page of pending jobs, after those already held.
    pub fn extend(&mut self, page: Vec<PendingJob>) {
        if !self.by_prefix {
            if !page.is_empty() {
                self.families.push_back(Family { jobs: page.into(), state: Arc::default() });
            }
            return;
        }
        let mut keyed: Vec<(String, PendingJob)> = page.into_iter().map(|j| (prompt_text(&j.body), j)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut before: Option<String> = None;
        for (text, job) in keyed {
            let joins = before.as_deref().is_some_and(|b| same_family(b, &text));
            match self.families.back_mut() {
                Some(family) if joins => family.jobs.push_back(job),
                _ => self.families.push_back(Family { jobs: VecDeque::from([job]), state: Arc::default() }),
            }
            before = Some(text);
        }
    }

    /// The next job to send: the next of the first family with the fewest jobs in flight; while as many
    /// families are in flight as the servers have lanes, the first of those with the fewest.
    pub fn pick(&mut self) -> Option<Picked> {
        let busy = self.flight.lock().unwrap_or_else(|e| e.into_inner()).busy;
        let full = self.lanes.is_some_and(|lanes| busy >= lanes);
        let mut best: Option<(usize, (bool, usize))> = None;
        for (i, family) in self.families.iter().enumerate() {
            let n = family.state.lock().unwrap_or_else(|e| e.into_inner()).in_flight;
            let rank = (full && n == 0, n);
            if best.is_none_or(|(_, fewest)| rank < fewest) {
                best = Some((i, rank));
            }
            if rank == (false, 0) {
                break;
            }
        }
        let (i, _) = best?;
        let family = &mut self.families[i];
        let job = family.jobs.pop_front().expect("a family in the window has jobs");
        let picked = Picked { job, family: family.state.clone(), flight: self.flight.clone() };
        if family.jobs.is_empty() {
            self.families.remove(i);
        }
        Some(picked)
    }

    /// Returns a picked job to the front of its family (a family of its own at the front if its family is gone).
    pub fn put_back(&mut self, picked: Picked) {
        let Picked { job, family: state, .. } = picked;
        match self.families.iter_mut().find(|f| Arc::ptr_eq(&f.state, &state)) {
            Some(family) => family.jobs.push_front(job),
            None => self.families.push_front(Family { jobs: VecDeque::from([job]), state }),
        }
    }

    /// The job to send now in place of `held`, picked before a permit was free: the families in flight may have
    /// changed while it waited (the permit that came free was a family's, whose next question should take it).
    pub fn repick(&mut self, held: Picked) -> Picked {
        self.put_back(held);
        self.pick().expect("a job was just put back")
    }
}

/// `body` (a JSON object) with llama-server's `id_slot` set to `slot`, so the server runs it on that slot.
pub fn with_slot(body: &str, slot: usize) -> String {
    let rest = body.trim_start().strip_prefix('{').unwrap_or(body);
    match rest.trim_start().starts_with('}') {
        true => format!("{{\"id_slot\":{slot}{rest}"),
        false => format!("{{\"id_slot\":{slot},{rest}"),
    }
}

/// Whether two sorted neighbours' prompts share at least half of the shorter one.
fn same_family(a: &str, b: &str) -> bool {
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    common > 0 && 2 * common >= a.len().min(b.len())
}

/// The text a request's prompt is made of, in the order the server reads it: each chat message's role and
/// content, a completion's prompt, an embedding's input; the body itself when it has none of those (or is not
/// JSON), so no job is ever dropped or refused here.
fn prompt_text(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return body.to_owned() };
    let mut text = String::new();
    if let Some(messages) = v["messages"].as_array() {
        for m in messages {
            text.push_str(m["role"].as_str().unwrap_or(""));
            text.push('\u{1}');
            push_content(&mut text, &m["content"]);
            text.push('\u{2}');
        }
        return text;
    }
    for key in ["prompt", "input"] {
        if !v[key].is_null() {
            push_content(&mut text, &v[key]);
            return text;
        }
    }
    body.to_owned()
}

/// A content value as text: a string as it is, a list of parts (or of inputs) one after another.
fn push_content(text: &mut String, content: &Value) {
    match content {
        Value::String(s) => text.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                match p {
                    Value::Object(_) => push_content(text, &p["text"]),
                    other => push_content(text, other),
                }
            }
        }
        Value::Null => {}
        other => text.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Endpoint;
    use serde_json::json;

    fn job(seq: i64, body: Value) -> PendingJob {
        PendingJob {
            seq,
            id: format!("j{seq}"),
            endpoint: Endpoint::Chat,
            body: body.to_string(),
            attempts: 0,
            line: seq,
        }
    }

    fn chat(doc: usize, question: usize) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Answer from the document."},
            {"role": "user", "content": format!("Document {doc}: {}\n\nQuestion {question}?", "text ".repeat(50))}
        ]})
    }

    /// Picks every job from a window of `page`, none left in flight: the order of sending at one in flight.
    fn order_alone(page: Vec<PendingJob>, by_prefix: bool) -> Vec<i64> {
        let mut w = Window::new(by_prefix);
        w.extend(page);
        std::iter::from_fn(|| w.pick()).map(|p| p.send().0.seq).collect()
    }

    #[test]
    fn shuffled_families_come_out_together_in_file_order_within_each() {
        // 5 documents × 4 questions, interleaved as a shuffled file would have them.
        let page: Vec<PendingJob> = (0..20).map(|i| job(i as i64, chat(i % 5, i / 5))).collect();
        let seqs = order_alone(page, true);
        let docs: Vec<i64> = seqs.iter().map(|s| s % 5).collect();
        let runs = docs.windows(2).filter(|w| w[0] != w[1]).count() + 1;
        assert_eq!(runs, 5, "each document's questions are adjacent: {docs:?}");
        for family in seqs.chunks(4) {
            assert!(family.windows(2).all(|w| w[0] < w[1]), "questions keep their order: {family:?}");
        }
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>(), "every job once");
        assert_eq!(
            order_alone((0..20).map(|i| job(i, chat(i as usize % 5, 0))).collect(), false),
            (0..20).collect::<Vec<_>>(),
            "off: store order"
        );
    }

    #[test]
    fn families_are_dealt_over_the_requests_in_flight() {
        // 3 documents × 3 questions, three in flight.
        let mut w = three_documents(None, false);
        let mut flying: Vec<(PendingJob, InFlight)> = (0..3).map(|_| w.pick().unwrap().send()).collect();
        let docs: Vec<i64> = flying.iter().map(|(j, _)| j.seq % 3).collect();
        assert_eq!(docs, vec![0, 1, 2], "one question of each document first");
        // Picked while the loop waits for a permit: every family has one in flight, so the first one's.
        let held = w.pick().unwrap();
        assert_eq!(held.job.seq % 3, 0);
        // Document 1's question is answered: the permit it frees goes to document 1's next question.
        let answered = flying.remove(1);
        assert_eq!(answered.0.seq % 3, 1);
        drop(answered);
        let now = w.repick(held);
        assert_eq!(now.job.seq, 4, "document 1 has none in flight now");
        flying.push(now.send());
        // More in flight than families: each next job joins the first family with the fewest in flight.
        while let Some(p) = w.pick() {
            flying.push(p.send());
        }
        let rest: Vec<i64> = flying[3..].iter().map(|(j, _)| j.seq).collect();
        assert_eq!(rest, vec![3, 7, 5, 6, 8], "every other job once, dealt over the families");
    }

    /// A window of 3 documents × 3 questions (job `i` asks question `i / 3` of document `i % 3`).
    fn three_documents(lanes: Option<usize>, pin: bool) -> Window {
        let mut w = Window::new(true);
        w.set_lanes(lanes, pin);
        w.extend((0..9).map(|i| job(i, chat(i as usize % 3, i as usize / 3))).collect());
        w
    }

    #[test]
    fn no_more_families_are_in_flight_than_the_servers_have_lanes() {
        // 3 documents × 3 questions, two lanes, four in flight.
        let mut w = three_documents(Some(2), false);
        let mut flying: Vec<(PendingJob, InFlight)> = (0..4).map(|_| w.pick().unwrap().send()).collect();
        let docs: Vec<i64> = flying.iter().map(|(j, _)| j.seq % 3).collect();
        assert_eq!(docs, vec![0, 1, 0, 1], "the requests beyond the lanes go to the documents in flight");
        // Document 1's two questions are answered: its third goes, and the lanes are full again, so document
        // 0's third goes before document 2 starts.
        flying.retain(|(j, _)| j.seq % 3 != 1);
        let next: Vec<i64> = (0..2)
            .map(|_| w.pick().unwrap())
            .map(|p| p.send())
            .map(|(j, f)| {
                flying.push((j.clone(), f));
                j.seq
            })
            .collect();
        assert_eq!(next, vec![7, 6]);
        // Documents 0 and 1 are done with: document 2 starts.
        flying.clear();
        assert_eq!(w.pick().unwrap().job.seq, 2);
    }

    #[test]
    fn with_one_llama_server_each_family_in_flight_holds_a_slot_and_comes_back_to_it() {
        // 3 documents × 3 questions, two slots, pinned.
        let mut w = three_documents(Some(2), true);
        let mut flying: Vec<(PendingJob, InFlight)> = (0..4).map(|_| w.pick().unwrap().send()).collect();
        let slots: Vec<(i64, Option<usize>)> = flying.iter().map(|(j, f)| (j.seq % 3, f.slot())).collect();
        assert_eq!(
            slots,
            vec![(0, Some(0)), (1, Some(1)), (0, Some(0)), (1, Some(1))],
            "a document's questions share its slot"
        );
        // Document 0's questions are answered; its third goes back to its slot.
        flying.retain(|(j, _)| j.seq % 3 != 0);
        let third = w.pick().unwrap().send();
        assert_eq!((third.0.seq, third.1.slot()), (6, Some(0)));
        // Nothing in flight: document 1's last question goes back to slot 1, where its document is, and
        // document 2 takes the other.
        drop(third);
        flying.clear();
        let last = w.pick().unwrap().send();
        assert_eq!((last.0.seq, last.1.slot()), (7, Some(1)));
        let started = w.pick().unwrap().send();
        assert_eq!((started.0.seq, started.1.slot()), (2, Some(0)));
        // One family alone (a shared instruction block) spreads over every slot.
        let block = "Follow these instructions closely. ".repeat(20);
        let mut w = Window::new(true);
        w.set_lanes(Some(2), true);
        w.extend((0..4).map(|i| job(i, json!({"prompt": format!("{block}record {i}")}))).collect());
        let flying: Vec<(PendingJob, InFlight)> = (0..4).map(|_| w.pick().unwrap().send()).collect();
        assert_eq!(flying.iter().map(|(_, f)| f.slot().unwrap()).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
        // Without pinning no slot is named.
        let mut w = Window::new(true);
        w.set_lanes(Some(2), false);
        w.extend(vec![job(1, chat(1, 1))]);
        assert_eq!(w.pick().unwrap().send().1.slot(), None);
    }

    #[test]
    fn a_pinned_body_names_its_slot_first() {
        let pinned = with_slot(r#"{"model":"m","messages":[]}"#, 3);
        assert_eq!(
            serde_json::from_str::<Value>(&pinned).unwrap(),
            json!({"id_slot": 3, "model": "m", "messages": []})
        );
        assert_eq!(serde_json::from_str::<Value>(&with_slot(" { } ", 0)).unwrap(), json!({"id_slot": 0}));
    }

    #[test]
    fn a_family_shares_half_its_prompt_and_a_put_back_job_goes_first() {
        assert!(same_family("instructions: long block, record 1", "instructions: long block, record 2"));
        assert!(!same_family("Document 1: a long text", "Document 2: another long text"));
        assert!(!same_family("", ""), "nothing shared");
        // A long shared instruction block: one family, sent as many at once as the level allows.
        let block = "Follow these instructions closely. ".repeat(20);
        let mut w = Window::new(true);
        w.extend((0..4).map(|i| job(i, json!({"prompt": format!("{block}record {i}")}))).collect());
        let first = w.pick().unwrap();
        let second = w.pick().unwrap();
        assert_eq!((first.job.seq, second.job.seq), (0, 1));
        w.put_back(second);
        w.put_back(first);
        assert_eq!(std::iter::from_fn(|| w.pick()).map(|p| p.job.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn equal_prompts_keep_file_order_and_an_unreadable_body_is_sorted_by_itself() {
        let mut page = vec![job(1, json!({"prompt": "same"})), job(2, json!({"prompt": "same"}))];
        page.push(PendingJob { body: "not json".into(), ..job(3, json!({})) });
        page.push(job(4, json!({"prompt": "a first"})));
        assert_eq!(order_alone(page, true), vec![4, 3, 1, 2]);
    }

    #[test]
    fn the_prompt_text_is_what_the_server_reads_first() {
        assert_eq!(prompt_text(&json!({"prompt": "abc", "model": "z"}).to_string()), "abc");
        assert_eq!(prompt_text(&json!({"input": ["a", "b"]}).to_string()), "ab");
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(prompt_text(&parts.to_string()), "user\u{1}hi\u{2}");
        // The model comes after the prompt in the body, so it does not split families of the same prompt.
        assert!(prompt_text(&chat(1, 1).to_string()).starts_with("system\u{1}Answer"));
    }
}
