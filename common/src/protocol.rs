//! The coordinator ↔ agent protocol: length-delimited JSON frames over any byte stream
//! (a child's stdin/stdout locally, an SSH exec channel remotely).
//!
//! A frame is a u32 big-endian length, then that many bytes of JSON. Frames over
//! [`MAX_FRAME`] are refused before anything is allocated; files travel in chunks of
//! [`CHUNK_BYTES`], so no message needs more. Each side first sends a [`Hello`]; differing
//! protocol versions are refused with a message naming both. The agent's stdout carries
//! nothing else: its logs go to stderr or travel as [`FromAgent::Log`].
//! Documented in `docs/protocol.md`.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::failure::FailureKind;
use crate::probe::{ModelStatus, ProbeReport};
use crate::result::JobResult;
use crate::spec::ExperimentSpec;

/// Bumped on any incompatible change of the messages below. 3: typed failures, chunked
/// artifacts with a manifest in `finished`, `resend`, `probe` and `prepare`. 4: the
/// coordinator's `heartbeat`.
pub const PROTOCOL_VERSION: u32 = 4;

/// Set by the coordinator on an agent it starts as a Slurm step: the agent measures the
/// GPUs of its step (`SLURM_STEP_GPUS`).
pub const SLURM_STEP_ENV: &str = "LLEM_SLURM_STEP";

/// The largest frame either side accepts.
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Raw bytes of a file per [`FromAgent::ArtifactChunk`] (base64 makes a frame of about
/// 5.4 MiB, well under [`MAX_FRAME`]).
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The first message each way. Its shape never changes between protocol versions (and
/// unknown fields are ignored), so any two versions can tell each other apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// `llem` or `llem-agent` version.
    pub version: String,
    /// Host name of the sender.
    pub host: String,
    /// The coordinator's run (its run directory's name). The agent keeps this session's
    /// outbox under it and re-sends only that run's unacknowledged attempts: job ids are
    /// content hashes, so two runs of the same sweep share them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The coordinator's promise: it sends something (at least a [`ToAgent::Heartbeat`])
    /// every this many seconds. An agent that hears nothing for [`HEARTBEAT_MISSES`] times
    /// as long takes the coordinator for dead and stops, as if its input had closed: a
    /// Slurm step whose `srun` was killed with its process group keeps its input open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<f64>,
}

/// How many heartbeat intervals of silence an agent waits before it stops.
pub const HEARTBEAT_MISSES: f64 = 6.0;

impl Hello {
    pub fn new(host: impl Into<String>) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: host.into(),
            run: None,
            heartbeat_s: None,
        }
    }

    /// The coordinator's hello for a run.
    #[must_use]
    pub fn for_run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// The coordinator's hello, promising a heartbeat every `seconds`.
    #[must_use]
    pub fn with_heartbeat(mut self, seconds: f64) -> Self {
        self.heartbeat_s = Some(seconds);
        self
    }

    /// How long an agent waits for word from this coordinator before it stops (`None`:
    /// it promised no heartbeat, so for ever).
    pub fn silence_limit(&self) -> Option<std::time::Duration> {
        self.heartbeat_s
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| std::time::Duration::from_secs_f64((s * HEARTBEAT_MISSES).min(86_400.0)))
    }

    /// Refuses a peer that speaks another protocol version.
    pub fn check(&self, theirs: &Hello) -> Result<(), ProtocolError> {
        if theirs.protocol != self.protocol {
            return Err(ProtocolError::Version {
                ours: self.protocol,
                theirs: theirs.protocol,
                their_version: theirs.version.clone(),
                host: theirs.host.clone(),
            });
        }
        Ok(())
    }
}

/// A job attempt's identity: the job id and which attempt (each retry has its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptId {
    pub job_id: String,
    pub attempt: u32,
}

/// Coordinator → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToAgent {
    Hello(Hello),
    /// Run one attempt. The spec travels here, never on a command line.
    Run {
        id: AttemptId,
        spec: Box<ExperimentSpec>,
        /// The GPUs the scheduler gave the attempt (empty: a CPU job, or an agent that
        /// picks as `device` says). Left out when empty, so protocol 3 frames still read.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gpus: Vec<u32>,
    },
    /// Stop a running attempt: engine stopped, children killed, lock released.
    Cancel {
        id: AttemptId,
    },
    /// The coordinator has stored this attempt's files and result: drop it from the outbox.
    Ack {
        id: AttemptId,
    },
    /// The delivery of this attempt did not arrive intact (a chunk missing, a checksum
    /// wrong): send it again from the outbox.
    Resend {
        id: AttemptId,
    },
    /// Describe the node: answered by [`FromAgent::Probed`].
    Probe,
    /// Check that a model's files are present and readable: answered by
    /// [`FromAgent::Prepared`]. `model` is resolved as a job's would be.
    Prepare {
        model: String,
    },
    /// Nothing to do: the coordinator is alive (sent every `heartbeat_s` of its hello).
    Heartbeat,
    /// Finish and exit.
    Shutdown,
}

/// The phases of the locked sequence, for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    WaitingForLock,
    Baseline,
    Loading,
    Warmup,
    ThermalFloor,
    Measuring,
    Writing,
}

/// One file of a finished attempt, as listed in [`FromAgent::Finished`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactEntry {
    /// A plain file name ([`is_safe_artifact_name`]).
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Agent → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromAgent {
    Hello(Hello),
    Phase {
        id: AttemptId,
        phase: Phase,
    },
    /// Live power for progress displays (at most 1 Hz); `null` when not measured.
    Sample {
        id: AttemptId,
        power_w: Option<f64>,
        tokens_per_s: Option<f64>,
    },
    Log {
        id: Option<AttemptId>,
        level: String,
        message: String,
    },
    /// Bytes `offset..offset + len` of one file of an attempt (`timeseries.parquet`,
    /// `outputs.jsonl`, …), base64 in JSON. Chunks of a file come in order, before the
    /// attempt's `finished`; an empty file is one empty chunk.
    ArtifactChunk {
        id: AttemptId,
        name: String,
        offset: u64,
        base64: String,
    },
    /// The attempt's result and the manifest of its files: the coordinator acknowledges
    /// only when every listed file arrived with this size and sha256.
    Finished {
        id: AttemptId,
        result: Box<JobResult>,
        artifacts: Vec<ArtifactEntry>,
    },
    Failed {
        id: AttemptId,
        kind: FailureKind,
        message: String,
    },
    /// Sent once after `Hello`, when every unacknowledged attempt of the outbox was sent
    /// again (`count` of them): until then the coordinator starts nothing new, so a job
    /// whose result is on its way is never run twice.
    OutboxResent {
        count: u32,
    },
    /// The answer to [`ToAgent::Probe`].
    Probed {
        report: Box<ProbeReport>,
    },
    /// The answer to [`ToAgent::Prepare`].
    Prepared {
        model: String,
        status: ModelStatus,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("read or write a frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("the stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("a frame is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{host} speaks protocol {theirs} (llem-agent {their_version}), this llem speaks {ours}: install matching versions (`llem nodes deploy`)")]
    Version { ours: u32, theirs: u32, their_version: String, host: String },
}

/// Writes one message as a frame, in one write, and flushes. One write: over `srun -u` a
/// length written apart from its body would go out as a message of its own, and the body
/// would wait on its acknowledgement (see [`FrameReader`]).
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), ProtocolError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message)?;
    let body = frame.len() - 4;
    let len = u32::try_from(body).ok().filter(|&l| l <= MAX_FRAME).ok_or(ProtocolError::TooLarge(body as u64))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// A frame of length 0: a nudge, which carries nothing and which readers skip. The
/// coordinator sends them over `srun` ([`FrameReader`]).
pub const NUDGE: [u8; 4] = [0; 4];

/// Reads one message, skipping nudges; `Ok(None)` at a clean end of stream (between
/// frames).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, ProtocolError> {
    read_frame_with(&mut |buf: &mut [u8], _mid_frame: bool| read_full(r, buf))
}

/// [`read_frame`] over a filling function: `fill(buf, mid_frame)` reads as much of `buf`
/// as the stream has, waiting as needed (`mid_frame`: part of this frame has arrived).
fn read_frame_with<T: DeserializeOwned>(
    fill: &mut dyn FnMut(&mut [u8], bool) -> std::io::Result<usize>,
) -> Result<Option<T>, ProtocolError> {
    loop {
        let mut len = [0u8; 4];
        let got = fill(&mut len, false)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(ProtocolError::Truncated { got, want: 4 });
        }
        let len = u32::from_be_bytes(len);
        if len == 0 {
            continue;
        }
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge(u64::from(len)));
        }
        let mut body = vec![0u8; len as usize];
        let got = fill(&mut body, true)?;
        if got < body.len() {
            return Err(ProtocolError::Truncated { got, want: body.len() });
        }
        return Ok(Some(serde_json::from_slice(&body)?));
    }
}

/// Reads frames from a stream whose far end may be `srun -u`, and nudges the peer when a
/// frame stops half-way or a message needs no answer: srun holds back what it carries
/// until acknowledged, and a nudge ([`NUDGE`]) is what carries the acknowledgement
/// (`coordinator/src/run/srun_io.rs` tells the whole story, with its measurements). It
/// nudges only when nothing more is readable.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: std::io::BufReader<R>,
}

impl<R: Read + std::os::fd::AsFd> FrameReader<R> {
    pub fn new(inner: std::io::BufReader<R>) -> Self {
        FrameReader { inner }
    }

    /// Reads one message as [`read_frame`] does; `nudge` is called (at most once per
    /// wait) when the stream runs dry inside a frame.
    pub fn read<T: DeserializeOwned>(&mut self, nudge: &mut dyn FnMut()) -> Result<Option<T>, ProtocolError> {
        let inner = &mut self.inner;
        read_frame_with(&mut |buf: &mut [u8], mut mid_frame: bool| {
            let mut got = 0;
            while got < buf.len() {
                if mid_frame && inner.buffer().is_empty() && !readable_now(inner.get_ref()) {
                    nudge();
                }
                match inner.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                mid_frame = true;
            }
            Ok(got)
        })
    }
}

impl<R: Read + std::os::fd::AsFd> FrameReader<R> {
    /// After a message the reader will not answer at once: nudges the peer unless more is
    /// already readable. The peer's next frame would otherwise wait on the delayed
    /// acknowledgement of this one (two writes in a row, nothing back between).
    pub fn settle(&mut self, nudge: &mut dyn FnMut()) {
        if self.inner.buffer().is_empty() && !readable_now(self.inner.get_ref()) {
            nudge();
        }
    }
}

impl FromAgent {
    /// Whether the coordinator answers this at once (`finished`: with `ack`).
    pub fn is_answered(&self) -> bool {
        matches!(self, FromAgent::Finished { .. })
    }
}

/// Whether a read of `fd` would return at once (data, or the end of the stream).
pub fn readable_now(fd: &impl std::os::fd::AsFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    // An error says nothing about the stream: no nudge, the read reports it.
    poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0)
}

/// Fills `buf` as far as the stream allows; returns how much it got (less only at its end).
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether an artifact name is a plain file name that cannot leave the attempt's
/// directory: no separators, no `..`, nothing hidden, nothing empty.
pub fn is_safe_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> AttemptId {
        AttemptId { job_id: "0123456789abcdef-c1".into(), attempt: 1 }
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let spec =
            crate::spec::raw::RawExperiment::default().with_model("m").validate(Default::default()).expect("spec");
        let to: Vec<ToAgent> = vec![
            ToAgent::Hello(Hello::new("coord")),
            ToAgent::Run { id: id(), spec: Box::new(spec), gpus: vec![0, 1] },
            ToAgent::Cancel { id: id() },
            ToAgent::Ack { id: id() },
            ToAgent::Resend { id: id() },
            ToAgent::Probe,
            ToAgent::Prepare { model: "models/m.gguf".into() },
            ToAgent::Heartbeat,
            ToAgent::Shutdown,
        ];
        let mut buf = Vec::new();
        for m in &to {
            write_frame(&mut buf, m).expect("write");
        }
        let mut r = buf.as_slice();
        for m in &to {
            assert_eq!(read_frame::<ToAgent>(&mut r).expect("read").as_ref(), Some(m));
        }
        assert!(read_frame::<ToAgent>(&mut r).expect("clean end").is_none());

        let from =
            FromAgent::Failed { id: id(), kind: FailureKind::OutOfMemory, message: "CUDA_ERROR_OUT_OF_MEMORY".into() };
        let mut buf = Vec::new();
        write_frame(&mut buf, &from).expect("write");
        let text = String::from_utf8_lossy(&buf[4..]).into_owned();
        assert!(text.starts_with("{\"type\":\"failed\""), "{text}");
        assert_eq!(read_frame::<FromAgent>(&mut buf.as_slice()).expect("read"), Some(from));
    }

    #[test]
    fn nudges_are_skipped_and_sent_only_when_a_frame_stops_half_way() {
        let mut buf = NUDGE.to_vec();
        write_frame(&mut buf, &ToAgent::Probe).expect("write");
        buf.extend_from_slice(&NUDGE);
        let mut r = buf.as_slice();
        assert_eq!(read_frame::<ToAgent>(&mut r).expect("read"), Some(ToAgent::Probe));
        assert_eq!(read_frame::<ToAgent>(&mut r).expect("a nudge, then the end"), None);

        // Over a pipe: a frame whose second half comes later is nudged for once; a whole
        // frame is not.
        let (read_end, mut write_end) = std::io::pipe().expect("pipe");
        let mut frame = Vec::new();
        write_frame(&mut frame, &ToAgent::Prepare { model: "m".repeat(3000) }).expect("write");
        let (first, rest) = frame.split_at(1000);
        write_end.write_all(first).expect("first half");
        let (nudged_tx, nudged_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = FrameReader::new(std::io::BufReader::new(read_end));
            let mut nudges = 0;
            let m: Option<ToAgent> = reader
                .read(&mut || {
                    nudges += 1;
                    let _ = nudged_tx.send(());
                })
                .expect("read");
            let whole: Option<ToAgent> = reader.read(&mut || nudges += 100).expect("read");
            (m, whole, nudges)
        });
        nudged_rx.recv().expect("the reader nudged while the frame was half there");
        write_end.write_all(rest).expect("second half");
        write_frame(&mut write_end, &ToAgent::Probe).expect("a whole frame");
        let (m, whole, nudges) = reader.join().expect("reader");
        assert!(matches!(m, Some(ToAgent::Prepare { model }) if model.len() == 3000));
        assert_eq!(whole, Some(ToAgent::Probe));
        assert_eq!(nudges, 1);
    }

    #[test]
    fn bad_frames_are_errors() {
        let huge = (MAX_FRAME + 1).to_be_bytes();
        assert!(matches!(read_frame::<ToAgent>(&mut huge.as_slice()), Err(ProtocolError::TooLarge(_))));
        let mut cut = Vec::new();
        write_frame(&mut cut, &ToAgent::Shutdown).expect("write");
        cut.truncate(cut.len() - 2);
        assert!(matches!(read_frame::<ToAgent>(&mut cut.as_slice()), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(
            read_frame::<ToAgent>(&mut [0u8, 0].as_slice()),
            Err(ProtocolError::Truncated { got: 2, want: 4 })
        ));
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"nope!");
        assert!(matches!(read_frame::<ToAgent>(&mut junk.as_slice()), Err(ProtocolError::Json(_))));
    }

    #[test]
    fn the_coordinators_hello_names_its_run_and_the_agents_need_not() {
        let hello: Hello = serde_json::from_str(r#"{"protocol":3,"version":"0.1.0","host":"a"}"#).expect("no run");
        assert_eq!(hello.run, None);
        let text = serde_json::to_string(&Hello::new("c").for_run("sweep-20261127")).expect("json");
        assert!(text.contains(r#""run":"sweep-20261127""#), "{text}");
        assert!(!serde_json::to_string(&Hello::new("agent")).expect("json").contains("run"));
    }

    #[test]
    fn an_agent_waits_six_heartbeats_and_for_ever_without_one() {
        assert_eq!(Hello::new("c").silence_limit(), None);
        assert_eq!(Hello::new("c").with_heartbeat(5.0).silence_limit(), Some(std::time::Duration::from_secs(30)));
        assert_eq!(Hello::new("c").with_heartbeat(-1.0).silence_limit(), None);
        assert_eq!(Hello::new("c").with_heartbeat(f64::NAN).silence_limit(), None);
        assert!(!serde_json::to_string(&Hello::new("agent")).expect("json").contains("heartbeat"));
    }

    #[test]
    fn a_protocol_2_peer_is_refused_by_name() {
        // A frame as a protocol-2 agent sent it (checked in): hello keeps its shape across
        // versions, so the answer is a clear refusal, not a decoding error.
        let text = include_str!("../../tests/fixtures/protocol-v2-hello.json");
        let theirs = match serde_json::from_str::<FromAgent>(text).expect("an old hello decodes") {
            FromAgent::Hello(h) => h,
            other => panic!("not a hello: {other:?}"),
        };
        assert_eq!(theirs.protocol, 2);
        let err = Hello::new("coordinator").check(&theirs).expect_err("refused").to_string();
        assert!(err.contains("speaks protocol 2") && err.contains("this llem speaks 4"), "{err}");
        // A newer peer's hello may carry fields this build does not know.
        let newer = r#"{"type":"hello","protocol":9,"version":"9.0.0","host":"b","gpus":8}"#;
        assert!(matches!(serde_json::from_str::<FromAgent>(newer), Ok(FromAgent::Hello(_))));
    }

    #[test]
    fn a_chunk_of_a_file_fits_in_a_frame() {
        let chunk = FromAgent::ArtifactChunk {
            id: id(),
            name: "outputs.jsonl".into(),
            offset: 0,
            base64: "A".repeat(CHUNK_BYTES.div_ceil(3) * 4),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &chunk).expect("a full chunk is under the frame limit");
        assert!(buf.len() < MAX_FRAME as usize);
    }

    #[test]
    fn versions_must_match() {
        let ours = Hello::new("coord");
        let mut theirs = Hello::new("gpu1");
        assert!(ours.check(&theirs).is_ok());
        theirs.protocol = 99;
        let err = ours.check(&theirs).expect_err("mismatch").to_string();
        assert!(err.starts_with("gpu1 speaks protocol 99"), "{err}");
    }

    #[test]
    fn artifact_names_cannot_escape() {
        for ok in ["timeseries.parquet", "agent.log", "outputs.jsonl"] {
            assert!(is_safe_artifact_name(ok), "{ok}");
        }
        for bad in ["../../x", "/etc/passwd", "a/b", "..", ".hidden", "", "x\0y", "a\\b"] {
            assert!(!is_safe_artifact_name(bad), "{bad:?}");
        }
    }
}
