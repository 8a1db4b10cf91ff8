//! Where and when jobs start: a slot's fitness for a job, the scan in execution order,
//! several-GPU jobs (all or nothing, with a reservation while they wait) and jobs no live
//! slot can serve. Part of the pure scheduler (`mod.rs` has the rules and the events).

use llem_common::failure::FailureKind;

use super::{Effect, JobInput, JobState, Readiness, Slot, State, Unservable};

impl State {
    /// Whether a slot may run a job now: live, free, fitting, eligible, node probed and
    /// the job's model ready there.
    fn can_take(&self, slot: &Slot, job: &JobInput) -> bool {
        let node = slot.node as usize;
        slot.busy.is_none()
            && self.live(slot)
            && slot.fits(job.need)
            && job.nodes.contains(&slot.node)
            && self.probes[node] == Readiness::Ready
            && job.model.is_none_or(|m| self.models[node][m as usize] == Readiness::Ready)
    }

    pub(super) fn schedule(&mut self, now: f64, effects: &mut Vec<Effect>) {
        // Skips first: they can unblock nothing, but they end jobs.
        while std::mem::take(&mut self.skips_due) {
            let mut changed = false;
            for j in self.advance_first_open()..self.jobs.len() {
                if self.states[j] != JobState::Pending {
                    continue;
                }
                let oom = self.jobs[j].after.iter().copied().find(|&p| match self.states[p as usize] {
                    JobState::Failed { kind, .. } => kind.skips_larger_values(),
                    JobState::Skipped { .. } => true,
                    _ => false,
                });
                if let Some(p) = oom {
                    self.states[j] = JobState::Skipped { because: p };
                    effects.push(Effect::Skip { job: j as u32, because: p });
                    changed = true;
                }
            }
            // A skip may skip the jobs after it in turn.
            self.skips_due = changed;
        }
        if self.cancelled {
            return;
        }
        self.ask(effects);
        if self.held {
            return;
        }
        // Idle slots (gaps included) that a job not yet ended could use. The scan over the
        // jobs stops once each is settled: it took a job, it is reserved, or it is in a gap
        // and a job would start on it the moment the gap ends (no later job can do more
        // with it). Scanning on would cost O(jobs × slots) per event for nothing.
        let first_open = self.advance_first_open();
        let mut unsettled = vec![false; self.slots.len()];
        for (i, s) in self.slots.iter().enumerate() {
            unsettled[i] =
                s.busy.is_none() && self.live(s) && self.last_job_for_slot[i].is_some_and(|last| last >= first_open);
        }
        let mut idle = unsettled.iter().filter(|&&u| u).count();
        let mut settle = |i: usize, idle: &mut usize| {
            if std::mem::take(&mut unsettled[i]) {
                *idle -= 1;
            }
        };
        let mut earliest_wake: Option<f64> = None;
        // Slots kept free for a several-GPU job that waits for more of them.
        let mut reserved = vec![false; self.slots.len()];
        for j in first_open..self.jobs.len() {
            if idle == 0 {
                break;
            }
            if self.states[j] != JobState::Pending {
                continue;
            }
            let job = &self.jobs[j];
            if !job.after.iter().all(|&p| self.states[p as usize].is_terminal()) {
                continue;
            }
            let want = job.need.slots();
            // Free slots that may take it now, grouped by node (one node per job); and, for
            // a reservation, the free ones still in a gap too (a job of another cycle
            // would otherwise take each as its gap ends).
            let mut chosen: Vec<usize> = Vec::new();
            let mut free_by_node: Vec<(u16, Vec<usize>)> = Vec::new();
            let mut idle_by_node: Vec<(u16, Vec<usize>)> = Vec::new();
            for (i, slot) in self.slots.iter().enumerate() {
                if reserved[i] || !self.can_take(slot, job) {
                    continue;
                }
                group_by_node(&mut idle_by_node, slot.node, i);
                let gap = if slot.last_cycle.is_some_and(|c| c != job.cycle) { self.cycle_gap_s } else { 0.0 };
                let at = slot.ready_at + gap;
                if at > now {
                    earliest_wake = Some(earliest_wake.map_or(at, |w: f64| w.min(at)));
                    if at == slot.ready_at {
                        settle(i, &mut idle);
                    }
                    continue;
                }
                if group_by_node(&mut free_by_node, slot.node, i).len() == want {
                    chosen = free_by_node
                        .iter_mut()
                        .find(|(n, _)| *n == slot.node)
                        .map(|(_, g)| std::mem::take(g))
                        .unwrap_or_default();
                    break;
                }
            }
            if chosen.is_empty() {
                if want > 1 {
                    self.reserve_for(j, &idle_by_node, &mut reserved);
                    for (i, _) in reserved.iter().enumerate().filter(|(_, &r)| r) {
                        settle(i, &mut idle);
                    }
                }
                continue;
            }
            self.attempts[j] += 1;
            let attempt = self.attempts[j];
            for &i in &chosen {
                let slot = &mut self.slots[i];
                slot.busy = Some(j as u32);
                slot.last_cycle = Some(self.jobs[j].cycle);
                settle(i, &mut idle);
            }
            self.states[j] = JobState::Running { attempt, slot: chosen[0] as u32 };
            effects.push(Effect::Dispatch { job: j as u32, attempt, slot: chosen[0] as u32 });
        }
        if let Some(at) = earliest_wake {
            effects.push(Effect::WakeAt { at });
        }
    }

    /// A several-GPU job that cannot start yet keeps the free GPUs of the node closest to
    /// having enough (among nodes with enough GPU slots at all) for itself.
    fn reserve_for(&self, j: usize, free_by_node: &[(u16, Vec<usize>)], reserved: &mut [bool]) {
        let job = &self.jobs[j];
        let big_enough = |node: u16| {
            self.slots.iter().filter(|s| s.node == node && self.live(s) && s.fits(job.need)).count() >= job.need.slots()
        };
        if let Some((_, free)) = free_by_node
            .iter()
            .filter(|(n, _)| big_enough(*n))
            .max_by_key(|(n, free)| (free.len(), std::cmp::Reverse(*n)))
        {
            for &i in free {
                reserved[i] = true;
            }
        }
    }

    /// Why a pending job can run nowhere, if it cannot.
    fn unservable(&self, job: &JobInput) -> Option<Unservable> {
        let mut model_missing = false;
        for &node in &job.nodes {
            let n = node as usize;
            let fitting = self.slots.iter().filter(|s| s.node == node && s.fits(job.need)).count();
            if self.lost_nodes.contains(&node) || fitting < job.need.slots() {
                continue;
            }
            if job.model.is_some_and(|m| self.models[n][m as usize] == Readiness::Unavailable) {
                model_missing = true;
                continue;
            }
            return None;
        }
        Some(if model_missing { Unservable::ModelUnavailable } else { Unservable::NoLiveNode })
    }

    /// Pending jobs no live slot can serve end as failed, so the sweep can finish.
    pub(super) fn fail_unservable(&mut self, now: f64, effects: &mut Vec<Effect>) {
        if self.cancelled || !self.servability_changed {
            return;
        }
        self.servability_changed = false;
        let mut ended = false;
        for j in self.advance_first_open()..self.jobs.len() {
            if self.states[j] != JobState::Pending {
                continue;
            }
            if let Some(why) = self.unservable(&self.jobs[j]) {
                let kind = match why {
                    Unservable::NoLiveNode => FailureKind::LostConnection,
                    Unservable::ModelUnavailable => FailureKind::BadJob,
                };
                self.states[j] = JobState::Failed { attempt: self.attempts[j], kind };
                effects.push(Effect::Unservable { job: j as u32, why });
                ended = true;
                self.skips_due = true;
            }
        }
        if ended && now.is_finite() {
            self.schedule(now, effects);
        }
    }
}

/// Adds slot `i` to its node's group; returns the group.
fn group_by_node(groups: &mut Vec<(u16, Vec<usize>)>, node: u16, i: usize) -> &[usize] {
    let g = match groups.iter().position(|(n, _)| *n == node) {
        Some(g) => g,
        None => {
            groups.push((node, Vec::new()));
            groups.len() - 1
        }
    };
    groups[g].1.push(i);
    &groups[g].1
}
