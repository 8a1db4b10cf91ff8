//! `engine: command`: any external program, measured while it runs.
//!
//! `command: [program, args…]` runs during the measured window, with no shell in between
//! (arguments are passed as they are). `command_warmup` runs once during warmup. If the
//! program writes JSON to the path in `LLEM_WORKLOAD_REPORT`, its numbers are used:
//!
//! ```json
//! {"input_tokens": 1200, "output_tokens": 6400,
//!  "ttft_ms": [31.2, …], "itl_ms": [9.8, …], "request_ms": [640.1, …]}
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llem_common::spec::ExperimentSpec;
use serde::Deserialize;

use super::{Engine, EngineError, Loaded, RequestMetrics};

/// The environment variable naming where the program may write its report.
pub const REPORT_ENV: &str = "LLEM_WORKLOAD_REPORT";
/// The environment variable naming the attempt's directory: files the program writes
/// there (plain names, not hidden) are kept with the attempt and sent to the coordinator.
pub const JOB_DIR_ENV: &str = "LLEM_JOB_DIR";

#[derive(Debug)]
pub struct CommandEngine {
    argv: Vec<String>,
    warmup: Option<Vec<String>>,
    report_path: PathBuf,
    job_dir: PathBuf,
    warmed: bool,
    cancel: super::Cancel,
    /// The job's GPUs (`0,1`; empty for a CPU job), exported as `CUDA_VISIBLE_DEVICES`.
    gpus: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    #[serde(default)]
    ttft_ms: Vec<f64>,
    #[serde(default)]
    itl_ms: Vec<f64>,
    #[serde(default)]
    request_ms: Vec<f64>,
}

impl CommandEngine {
    pub fn new(spec: &ExperimentSpec, work_dir: &Path) -> Result<Self, EngineError> {
        let argv =
            spec.command.clone().filter(|a| !a.is_empty()).ok_or_else(|| {
                EngineError::BadJob("`engine: command` needs `command: [program, args...]`".to_owned())
            })?;
        Ok(CommandEngine {
            argv,
            warmup: spec.command_warmup.clone(),
            report_path: work_dir.join("workload-report.json"),
            job_dir: work_dir.to_owned(),
            warmed: false,
            cancel: super::Cancel::default(),
            gpus: String::new(),
        })
    }

    #[must_use]
    pub fn with_gpus(mut self, gpus: &str) -> Self {
        gpus.clone_into(&mut self.gpus);
        self
    }

    #[must_use]
    pub fn with_cancel(mut self, cancel: super::Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    fn run(&self, argv: &[String]) -> Result<f64, EngineError> {
        let start = Instant::now();
        // No shell: argv[0] is the program, the rest are its arguments, verbatim.
        // Its stdout goes to our stderr: the agent's stdout belongs to the protocol.
        let mut command = Command::new(&argv[0]);
        // Only the job's GPUs (none for a CPU job), numbered as NVML numbers them.
        command.env("CUDA_VISIBLE_DEVICES", &self.gpus).env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        let mut child = command
            .args(&argv[1..])
            .env(REPORT_ENV, &self.report_path)
            .env(JOB_DIR_ENV, &self.job_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .spawn()
            .map_err(|e| EngineError::BadJob(format!("cannot start `{}`: {e}", argv[0])))?;
        // Watch for cancellation while it runs: a cancelled job leaves no program behind.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.cancel.is_requested() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(EngineError::Cancelled);
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => return Err(EngineError::Failed(format!("cannot wait for `{}`: {e}", argv[0]))),
            }
        };
        if !status.success() {
            return Err(EngineError::Failed(format!("`{}` exited with {status}", argv.join(" "))));
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }
}

impl Engine for CommandEngine {
    fn load(&mut self) -> Result<Loaded, EngineError> {
        let _ = std::fs::remove_file(&self.report_path);
        Ok(Loaded::default())
    }

    fn warmup_step(&mut self, _step: u32) -> Result<Option<f64>, EngineError> {
        match (&self.warmup, self.warmed) {
            (Some(argv), false) => {
                self.warmed = true;
                self.run(argv).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError> {
        let _ = std::fs::remove_file(&self.report_path);
        let wall_ms = self.run(&self.argv)?;
        let Ok(text) = std::fs::read_to_string(&self.report_path) else {
            // No report: one "request" spanning the run, token counts unknown (0).
            return Ok(vec![RequestMetrics { request_ms: wall_ms, ..RequestMetrics::default() }]);
        };
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            EngineError::Failed(format!("{} is not a valid workload report: {e}", self.report_path.display()))
        })?;
        // Per-request latencies when given; the token totals go on the first request.
        let n = report.request_ms.len().max(1);
        let mut requests: Vec<RequestMetrics> = (0..n)
            .map(|i| RequestMetrics {
                request_ms: report.request_ms.get(i).copied().unwrap_or(wall_ms),
                ttft_ms: report.ttft_ms.get(i).copied(),
                ..RequestMetrics::default()
            })
            .collect();
        requests[0].input_tokens = report.input_tokens.unwrap_or(0);
        requests[0].output_tokens = report.output_tokens.unwrap_or(0);
        requests[0].itl_ms = report.itl_ms;
        Ok(requests)
    }
}

#[cfg(test)]
mod tests {
    use llem_common::failure::FailureKind;

    use super::*;

    fn spec(command: &[&str]) -> ExperimentSpec {
        let mut spec = llem_common::spec::raw::RawExperiment::default()
            .with_model("cmd")
            .validate(Default::default())
            .expect("valid");
        spec.engine = llem_common::spec::Engine::Command;
        spec.command = Some(command.iter().map(|s| (*s).to_owned()).collect());
        spec
    }

    #[test]
    fn uses_the_report_and_never_a_shell() {
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("pwned");
        // If a shell saw this, it would create the marker file.
        let script = format!(
            "import json,os,sys; json.dump({{'input_tokens': 10, 'output_tokens': 42, 'request_ms': [5.0, 6.0]}}, open(os.environ['{REPORT_ENV}'], 'w')); assert sys.argv[1] == '$(touch {})'",
            marker.display()
        );
        let arg = format!("$(touch {})", marker.display());
        let mut engine = CommandEngine::new(&spec(&["python3", "-c", &script, &arg]), dir.path()).expect("engine");
        engine.load().expect("load");
        let requests = engine.measure().expect("runs");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests.iter().map(|r| r.output_tokens).sum::<u64>(), 42);
        assert!(!marker.exists(), "an argument reached a shell");
    }

    #[test]
    fn failures_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut engine = CommandEngine::new(&spec(&["false"]), dir.path()).expect("engine");
        let err = engine.measure().expect_err("exit 1");
        assert_eq!(err.kind(), FailureKind::EngineError, "a program that fails may pass next time");
        let mut engine = CommandEngine::new(&spec(&["/no/such/program"]), dir.path()).expect("engine");
        let err = engine.measure().expect_err("missing");
        assert!(err.to_string().starts_with("cannot start `/no/such/program`"), "{err}");
        assert_eq!(err.kind(), FailureKind::BadJob, "a program that is not there will not be next time");
    }
}
