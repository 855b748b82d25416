//! Model-aware scheduling: one loop per server, the one owner of that server's scheduling state.
//!
//! The loop feeds the loaded model's ready work (steps whose inputs are finished, read from the store in
//! pages) at that model's concurrency, and switches to another model only when that work runs out or the
//! batch bound of [`SwitchPolicy`] is reached while another model has ready work; on a server that holds one
//! model at a time the next model's requests go out once the last model's have finished. Per-job chaining would
//! switch on almost every request; this switches a handful of times per run. The store is the only shared
//! state: a unit is in flight from its spawn until the writer has committed its result (the loop flushes the
//! writer before trusting the store again), so nothing is sent twice. The whole run is over when no step of
//! any job is ready, in flight or not: then nothing can become ready either.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::group::{Group, GroupConcurrency};
use super::shared::{ServerPlan, Shared};
use super::task::{self, Event, Lane, TaskCtx};
use super::{SwitchPolicy, Unit};
use crate::dispatch::Attempts;
use crate::store::{committed, Store, StoreError, WriteMsg};
use crate::tune::TuneStatus;

/// Runs every server's loop until no work is left or the run stops.
pub async fn run_servers(
    reader: &Store,
    shared: Arc<Shared>,
    plans: Vec<ServerPlan>,
    concurrency: GroupConcurrency,
    drain: Duration,
) -> Result<(), StoreError> {
    let mut loops = JoinSet::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let lp = ServerLoop::new(reader.reopen()?, shared.clone(), plan, concurrency, index);
        loops.spawn(lp.run(drain));
    }
    let mut result = Ok(());
    while let Some(r) = loops.join_next().await {
        if let Ok(Err(e)) = r {
            shared.stop.cancel();
            result = Err(e);
        }
    }
    result
}

struct ServerLoop {
    reader: Store,
    shared: Arc<Shared>,
    ctx: Arc<TaskCtx>,
    groups: Vec<Group>,
    active: Option<usize>,
    /// The group switched away from, while its requests are still in flight.
    draining: Option<usize>,
    policy: SwitchPolicy,
    in_flight: HashSet<(i64, usize)>,
    finished: Vec<Event>,
    events: UnboundedReceiver<Event>,
    progress: watch::Receiver<u64>,
    tasks: JoinSet<()>,
    index: usize,
    /// The models the server had loaded when the run began (its first model is one of them if it can be).
    loaded: Vec<String>,
}

impl ServerLoop {
    fn new(reader: Store, shared: Arc<Shared>, plan: ServerPlan, c: GroupConcurrency, index: usize) -> ServerLoop {
        let mut groups: Vec<Group> = Vec::new();
        for &s in &plan.steps {
            let model = &shared.workflow.steps[s].model;
            match groups.iter_mut().find(|g| &g.model == model) {
                Some(g) => g.steps.push(s),
                None => groups.push(Group::new(model.clone(), vec![s], c, plan.kind)),
            }
        }
        for g in &mut groups {
            g.steps.sort_unstable_by(|a, b| b.cmp(a));
            g.cursors = vec![0; g.steps.len()];
        }
        // Latest steps first: finishing jobs keeps results flowing and the pipeline short.
        groups.sort_by_key(|g| std::cmp::Reverse(g.steps[0]));
        let (tx, events) = unbounded_channel();
        let attempts = Attempts {
            backend: plan.backend,
            health: plan.health,
            writer: shared.writer.clone(),
            stats: shared.stats.clone(),
            max_attempts: shared.max_attempts,
            stop: shared.stop.clone(),
            hard: shared.hard.clone(),
            // A step is placed on its server: an outage pauses that server's loop until it is back.
            reroute: false,
        };
        let ctx = Arc::new(TaskCtx { shared: shared.clone(), attempts, events: tx });
        let progress = shared.progress.subscribe();
        ServerLoop {
            reader,
            shared,
            ctx,
            groups,
            active: None,
            draining: None,
            policy: SwitchPolicy::default(),
            in_flight: HashSet::new(),
            finished: Vec::new(),
            events,
            progress,
            tasks: JoinSet::new(),
            index,
            loaded: plan.loaded,
        }
    }

    async fn run(mut self, drain: Duration) -> Result<(), StoreError> {
        let result = self.feed().await;
        crate::dispatch::drain(&mut self.tasks, &self.shared.stop, &self.shared.hard, drain).await;
        for g in &mut self.groups {
            g.samples = None;
            if let Some(t) = g.tune.take() {
                let _ = t.finish().await;
            }
        }
        result
    }

    async fn feed(&mut self) -> Result<(), StoreError> {
        while !self.shared.stop.is_cancelled() {
            self.settle().await?;
            let Some((g, units)) = self.next_batch()? else {
                // This server's own work in flight is work left; otherwise ask the store (other servers' too),
                // once failures held on probation are recorded (nothing else of their steps is left to run).
                if self.in_flight.is_empty() && !self.release_held().await? && !self.anything_left()? {
                    return Ok(());
                }
                self.wait().await;
                continue;
            };
            self.activate(g);
            if !self.drain().await? {
                return Ok(());
            }
            for unit in units {
                let Some(permit) = self.ctx.attempts.acquire(&self.groups[g].limiter).await else { return Ok(()) };
                // The model's first answer, while this page is sent, makes the rest of it samples (at 1 in
                // flight a page is 16 answers the controller would otherwise not hear of).
                if !self.groups[g].warm {
                    self.take_events();
                }
                self.in_flight.insert((unit.seq, unit.step));
                let group = &self.groups[g];
                // Requests sent before the model answered once after a switch carry its load: not a sample.
                let samples = if group.warm { group.samples.clone() } else { None };
                let lane = Lane { group: g, limiter: group.limiter.clone(), samples };
                self.tasks.spawn(task::run(self.ctx.clone(), lane, unit, permit));
                while self.tasks.try_join_next().is_some() {}
            }
            self.publish();
        }
        Ok(())
    }

    /// Records the failures this server's steps hold on probation; returns whether there were any.
    async fn release_held(&mut self) -> Result<bool, StoreError> {
        let steps: Vec<usize> = self.groups.iter().flat_map(|g| g.steps.iter().copied()).collect();
        let held = self.shared.probation.release(&steps);
        if held.is_empty() {
            return Ok(false);
        }
        for f in held {
            self.shared.writer.send(WriteMsg::Failed(f)).map_err(|_| StoreError::WriterGone)?;
        }
        committed(&self.shared.writer).await?;
        Ok(true)
    }

    /// Takes in finished tasks; once the writer has committed their results, they are no longer in flight.
    async fn settle(&mut self) -> Result<(), StoreError> {
        self.take_events();
        if self.finished.is_empty() {
            return Ok(());
        }
        committed(&self.shared.writer).await?;
        let mut taken = self.shared.taken.lock().expect("taken lock");
        for e in std::mem::take(&mut self.finished) {
            self.in_flight.remove(&(e.seq, e.step));
            taken.remove(&(e.seq, e.step));
        }
        drop(taken);
        self.shared.progress.send_modify(|n| *n += 1);
        self.publish();
        Ok(())
    }

    /// Takes in finished tasks' latencies (the first answer after a switch measures it and warms the group);
    /// they stay in flight until `settle` has their results committed.
    fn take_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.take(e);
        }
    }

    fn take(&mut self, e: Event) {
        if let Some((latency, load)) = e.answer {
            let group = &mut self.groups[e.group];
            if group.warm {
                group.answered(latency);
            } else if self.active == Some(e.group) {
                group.warm = true;
                self.policy.first_answer(latency, load, group.usual);
            }
        }
        self.finished.push(e);
    }

    /// After a switch on a server that holds one model at a time, waits until the previous model's requests
    /// have finished before sending the next model's: the server cannot start them sooner anyway, and a request
    /// of the old model still on its way when the new one's arrive would make the server load the old model
    /// again, and then the new one. Returns false if the run stops meanwhile.
    async fn drain(&mut self) -> Result<bool, StoreError> {
        while let Some(a) = self.draining {
            let steps = &self.groups[a].steps;
            if !self.in_flight.iter().any(|(_, s)| steps.contains(s)) {
                self.draining = None;
                break;
            }
            if self.shared.stop.is_cancelled() {
                return Ok(false);
            }
            self.wait().await;
            self.settle().await?;
        }
        Ok(true)
    }

    /// The group to feed and a page of its ready work, or `None` when none of this server's work is ready.
    fn next_batch(&mut self) -> Result<Option<(usize, Vec<Unit>)>, StoreError> {
        let now = Instant::now();
        let order: Vec<usize> = match self.active {
            // Stay while the batch lasts; after it, the others first if one has a batch's worth of work waiting.
            Some(a) if !self.policy.batch_done(now) => vec![a],
            Some(a) if !self.others_have_a_batch(a)? => {
                self.policy.stay(now);
                vec![a]
            }
            // Another server's model comes after this one's (the chain below): it is that server's work first.
            Some(a) => {
                let others = self.preferred((0..self.groups.len()).filter(|&g| g != a));
                others.into_iter().filter(|&g| !self.fed_elsewhere(g)).chain([a]).collect()
            }
            None => self.preferred(0..self.groups.len()),
        };
        for g in order.iter().copied().chain((0..self.groups.len()).filter(|g| !order.contains(g))) {
            let units = self.ready(g)?;
            if !units.is_empty() {
                return Ok(Some((g, units)));
            }
        }
        Ok(None)
    }

    /// Whether a group other than `active` has ready work for at least a batch. Its rate is taken as the larger
    /// of its own (from its level when last fed, perhaps early in its climb) and the active group's (same server,
    /// same lanes), so that a switch is not bought with too little work.
    fn others_have_a_batch(&self, active: usize) -> Result<bool, StoreError> {
        let batch = self.policy.batch().as_secs_f64();
        let active_rate = self.groups[active].rate();
        // Work of a model another server is feeding now is that server's to take: no reason to switch here.
        let others = (0..self.groups.len()).filter(|&g| g != active && !self.fed_elsewhere(g));
        for group in others.map(|g| &self.groups[g]) {
            let rate = [group.rate(), active_rate].into_iter().flatten().reduce(f64::max);
            let need = rate.map_or(1, |r| (r * batch).ceil() as usize).max(1);
            let mut have = 0;
            for &s in &group.steps {
                let (name, deps) = (&self.shared.workflow.steps[s].name, self.shared.workflow.dep_names(s));
                have += self.reader.count_ready(name, &deps, need - have)?;
                if have >= need {
                    tracing::debug!(model = %group.model, need, "a batch of work is waiting");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// `groups` in the order this server prefers them (stable otherwise): at the start a model it has loaded,
    /// then models no other server is feeding now, then those another server feeds (it takes their work; this
    /// one helps when it has nothing else), so that servers listing the same models each keep one loaded instead
    /// of all switching together.
    fn preferred(&self, groups: impl Iterator<Item = usize>) -> Vec<usize> {
        let loaded_here = |g: usize| {
            self.active.is_none() && self.loaded.iter().any(|m| crate::backend::names_model(m, &self.groups[g].model))
        };
        let mut order: Vec<usize> = groups.collect();
        order.sort_by_cached_key(|&g| (!loaded_here(g), self.fed_elsewhere(g)));
        order
    }

    /// Whether another server's loop is feeding group `g`'s model now.
    fn fed_elsewhere(&self, g: usize) -> bool {
        let model = &self.groups[g].model;
        let others = self.shared.flow.servers.iter().enumerate().filter(|(i, _)| *i != self.index);
        others.into_iter().any(|(_, view)| view.lock().is_ok_and(|v| v.model.as_ref() == Some(model)))
    }

    /// A page of group `g`'s ready work that is not in flight, latest steps first.
    fn ready(&mut self, g: usize) -> Result<Vec<Unit>, StoreError> {
        let want = (2 * self.groups[g].limiter.limit()).max(16);
        let mut out = Vec::new();
        // Held while the store is read and the page taken: a loop settling a unit (commit, then give it back)
        // cannot slip between this read and this check, which would let a page read before that commit send the
        // unit again.
        let shared = self.shared.clone();
        let mut taken = shared.taken.lock().expect("taken lock");
        for i in 0..self.groups[g].steps.len() {
            let s = self.groups[g].steps[i];
            let step = &shared.workflow.steps[s];
            let deps = shared.workflow.dep_names(s);
            let mut from_start = self.groups[g].cursors[i] == 0;
            while out.len() < want {
                let cursor = self.groups[g].cursors[i];
                let page = self.reader.ready_units(&step.name, &step.fingerprint, &deps, cursor, want)?;
                let end = page.len() < want;
                self.groups[g].cursors[i] = page.last().map(|u| u.seq).unwrap_or(cursor);
                // After a wrap the first pass's units come round again: take each once.
                let fresh = |u: &crate::store::ReadyUnit| {
                    !taken.contains(&(u.seq, s))
                        && !out.iter().any(|o: &Unit| o.seq == u.seq && o.step == s)
                        && !shared.probation.is_held(s, u.seq)
                };
                let page: Vec<_> = page.into_iter().filter(|u| fresh(u)).collect();
                out.extend(page.into_iter().map(|u| Unit {
                    seq: u.seq,
                    id: u.id,
                    line: u.line,
                    step: s,
                    fields: u.fields,
                    done: u.done,
                    attempts: u.attempts,
                }));
                if end {
                    // Wrap: work before the cursor may have become ready since.
                    self.groups[g].cursors[i] = 0;
                    if from_start {
                        break;
                    }
                    from_start = true;
                }
            }
        }
        out.truncate(want);
        // Taken as read: another server's loop running the same step passes over these.
        for u in &out {
            taken.insert((u.seq, u.step));
        }
        Ok(out)
    }

    /// Whether any step of any job (any server's, in flight or not) is still ready.
    fn anything_left(&self) -> Result<bool, StoreError> {
        let workflow = &self.shared.workflow;
        for (s, step) in workflow.steps.iter().enumerate() {
            if self.reader.count_ready(&step.name, &workflow.dep_names(s), 1)? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn activate(&mut self, g: usize) {
        if self.active == Some(g) {
            return;
        }
        if let Some(a) = self.active {
            self.groups[a].clock.set_active(false);
            self.draining = self.policy.one_model_at_a_time().then_some(a);
        }
        tracing::info!(model = %self.groups[g].model, "switching model");
        self.groups[g].clock.set_active(true);
        let prior = self.groups.iter().filter_map(Group::learned_level).max();
        self.groups[g].start_tuning(prior);
        self.groups[g].warm = false;
        self.active = Some(g);
        self.policy.switched(Instant::now());
    }

    /// Waits for one of this server's tasks to finish, another server's progress, or the stop.
    async fn wait(&mut self) {
        tokio::select! {
            Some(e) = self.events.recv() => self.take(e),
            _ = self.progress.changed() => {}
            _ = self.shared.stop.cancelled() => {}
        }
    }

    fn publish(&self) {
        let Some(view) = self.shared.flow.servers.get(self.index) else { return };
        let mut mix: Vec<(String, usize)> = Vec::new();
        for (_, s) in &self.in_flight {
            let name = &self.shared.workflow.steps[*s].name;
            match mix.iter_mut().find(|(n, _)| n == name) {
                Some(m) => m.1 += 1,
                None => mix.push((name.clone(), 1)),
            }
        }
        let tuning = self
            .groups
            .iter()
            .map(|g| {
                let st: Option<TuneStatus> = g.tune.as_ref().and_then(|t| t.status.lock().ok().map(|s| s.clone()));
                let phase = st.as_ref().map(|s| s.phase.name()).unwrap_or("fixed");
                (g.model.clone(), st.and_then(|s| s.held).unwrap_or(g.limiter.limit()), phase)
            })
            .collect();
        let mut v = view.lock().expect("server view lock");
        v.model = self.active.map(|a| self.groups[a].model.clone());
        v.switches = self.policy.switches;
        v.switching = self.policy.switching;
        v.in_flight = mix;
        v.tuning = tuning;
    }
}
