//! Progress on stderr: an indicatif bar with a line per device slot (job, phase, live
//! watts) on a terminal; plain lines otherwise (a log, CI), where the slot lines would
//! only be noise.

/// What a slot's line shows.
#[derive(Debug, Clone, Default, PartialEq)]
struct SlotLine {
    name: String,
    job: String,
    phase: String,
    /// Live power, at most once a second, where the node has a sensor.
    watts: Option<f64>,
}

impl SlotLine {
    fn render(&self) -> String {
        let job = if self.job.is_empty() { "idle".to_owned() } else { format!("{} {}", self.job, self.phase) };
        let watts = self.watts.map_or_else(String::new, |w| format!(" · {w:.1} W"));
        format!("{}: {}{watts}", self.name, job.trim_end())
    }
}

#[derive(Debug)]
pub struct Progress {
    multi: Option<indicatif::MultiProgress>,
    bar: Option<indicatif::ProgressBar>,
    lines: Vec<Option<indicatif::ProgressBar>>,
    slots: Vec<SlotLine>,
    total: usize,
    done: usize,
    failed: usize,
    /// Jobs counted as ended, and whether as failed (a job failed for good can still
    /// finish, from an outbox: it is then counted once, as finished).
    ended: std::collections::HashMap<String, bool>,
}

impl Progress {
    pub fn new(total: usize, already: usize, slots: &[String]) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = tty.then(indicatif::MultiProgress::new);
        let bar = multi.as_ref().map(|m| {
            let bar = m.add(indicatif::ProgressBar::new(total as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} jobs ({msg}) eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(already as u64);
            bar
        });
        let slots: Vec<SlotLine> = slots.iter().map(|n| SlotLine { name: n.clone(), ..SlotLine::default() }).collect();
        let lines = slots
            .iter()
            .map(|s| {
                multi.as_ref().map(|m| {
                    let line = m.add(indicatif::ProgressBar::new_spinner());
                    line.set_message(s.render());
                    line
                })
            })
            .collect();
        Progress { multi, bar, lines, slots, total, done: already, failed: 0, ended: Default::default() }
    }

    fn redraw(&self, slot: usize) {
        if let (Some(Some(line)), Some(state)) = (self.lines.get(slot), self.slots.get(slot)) {
            line.set_message(state.render());
            line.tick();
        }
    }

    /// A slot starts a job (`None`: it is idle again).
    pub fn slot_job(&mut self, slot: usize, job: Option<&str>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.job = job.unwrap_or_default().to_owned();
            s.phase = if job.is_some() { "starting".to_owned() } else { String::new() };
            s.watts = None;
        }
        self.redraw(slot);
    }

    pub fn slot_phase(&mut self, slot: usize, phase: &str) {
        if let Some(s) = self.slots.get_mut(slot) {
            phase.clone_into(&mut s.phase);
        }
        self.redraw(slot);
    }

    /// Live power of a slot's devices (from the agent's `sample`, ≤ 1 Hz).
    pub fn slot_watts(&mut self, slot: usize, watts: Option<f64>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.watts = watts;
            tracing::debug!("{}", s.render());
        }
        self.redraw(slot);
    }

    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn started(&self, job: &str, attempt: u32, slot: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{} failed, running {job} on {slot}", self.failed)),
            None => self.line(&format!("[{}/{}] {job} attempt {attempt} on {slot}", self.done, self.total)),
        }
    }

    pub fn ended(&mut self, job: &str, what: &str, failed: bool) {
        match self.ended.insert(job.to_owned(), failed) {
            None => {
                self.done += 1;
                self.failed += usize::from(failed);
            }
            Some(was_failed) => self.failed = self.failed + usize::from(failed) - usize::from(was_failed),
        }
        self.line(&format!("[{}/{}] {job} {what}", self.done, self.total));
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        for line in self.lines.iter().flatten() {
            line.finish_and_clear();
        }
    }

    #[cfg(test)]
    pub fn slot_text(&self, slot: usize) -> String {
        self.slots[slot].render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_line_shows_job_phase_and_watts_only_when_measured() {
        let mut p = Progress::new(4, 0, &["n1/cuda:0".to_owned()]);
        assert_eq!(p.slot_text(0), "n1/cuda:0: idle");
        p.slot_job(0, Some("87cf823bcd68f0b7-c1"));
        p.slot_phase(0, "measuring");
        assert_eq!(p.slot_text(0), "n1/cuda:0: 87cf823bcd68f0b7-c1 measuring");
        p.slot_watts(0, Some(287.44));
        assert_eq!(p.slot_text(0), "n1/cuda:0: 87cf823bcd68f0b7-c1 measuring · 287.4 W");
        p.slot_job(0, None);
        assert_eq!(p.slot_text(0), "n1/cuda:0: idle", "a new job forgets the last one's watts");
    }
}
