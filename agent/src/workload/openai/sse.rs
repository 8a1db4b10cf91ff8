//! Server-sent events as OpenAI-compatible servers stream them, read incrementally:
//! bytes arrive in arbitrary pieces (an event may be split across reads, or several may
//! share one), and each complete event is interpreted as a completion chunk.

/// Splits a byte stream into SSE events (the `data:` lines of each, joined by `\n`).
#[derive(Debug, Default)]
pub struct EventReader {
    line: Vec<u8>,
    data: Option<String>,
}

impl EventReader {
    /// Feeds bytes; returns the data of every event they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        let mut rest = bytes;
        // Whole lines at a time: the split is a fast byte search, not a loop per byte.
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(end);
            rest = &after[1..];
            if self.line.is_empty() {
                self.line_done(strip_cr(piece), &mut events);
            } else {
                self.line.extend_from_slice(piece);
                let line = std::mem::take(&mut self.line);
                self.line_done(strip_cr(&line), &mut events);
            }
        }
        self.line.extend_from_slice(rest);
        events
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            // A blank line ends the event; one without data (only comments) is no event.
            if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
                events.push(data);
            }
            return;
        }
        if line[0] == b':' {
            return; // a comment (keep-alives)
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }

    /// Whether bytes of an unfinished event are pending (a stream cut mid-event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.data.is_some()
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What one event of a completion stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Generated text. `tokens` is the exact count when the event says it (per-token
    /// log-probabilities), else `None`.
    Text { text: String, tokens: Option<u32>, finish_reason: Option<String> },
    /// The final usage chunk.
    Usage { prompt_tokens: Option<u64>, completion_tokens: u64 },
    /// llama.cpp's own counts on its last chunk.
    Timings { prompt_n: Option<u64>, predicted_n: u64 },
    /// An event that carries no generated token (role-only or empty delta, a bare finish).
    Empty { finish_reason: Option<String> },
    /// `[DONE]`: the stream is complete.
    Done,
    /// `{"error": …}` sent inside the stream.
    Error(String),
}

// The parts of a chunk llem reads. Servers add fields of their own, so unknown fields
// are ignored here (this is someone else's format, not a file of ours). Strings borrow
// from the event where they can: this runs once per token of every stream.
#[derive(serde::Deserialize)]
struct RawChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<RawChoice<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    timings: Option<RawTimings>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct RawChoice<'a> {
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<RawLogprobs>,
}

#[derive(serde::Deserialize)]
struct RawDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct RawLogprobs {
    /// Completions: one entry per token.
    #[serde(default)]
    tokens: Option<Vec<serde::de::IgnoredAny>>,
    /// Chat: one entry per token.
    #[serde(default)]
    content: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(serde::Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct RawTimings {
    prompt_n: Option<u64>,
    predicted_n: Option<u64>,
}

/// Interprets one event's data. An event may say several things (text and usage in one
/// chunk): all are returned, text first.
pub fn interpret(data: &str) -> Result<Vec<Chunk>, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(vec![Chunk::Done]);
    }
    let chunk: RawChunk<'_> =
        serde_json::from_str(data).map_err(|e| format!("an event is not a completion chunk ({e}): {}", clip(data)))?;
    if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
        let message = err.get("message").and_then(|m| m.as_str()).map_or_else(|| err.to_string(), str::to_owned);
        return Ok(vec![Chunk::Error(message)]);
    }
    let mut out = Vec::new();
    if let Some(choice) = chunk.choices.into_iter().next() {
        // Completions put text in `text`; chat in `delta.content` (or `reasoning_content`).
        let (content, reasoning) = choice.delta.map_or((None, None), |d| (d.content, d.reasoning_content));
        let text = choice.text.or(content).or(reasoning).unwrap_or_default();
        let logprob_tokens =
            choice.logprobs.and_then(|l| l.tokens.or(l.content)).map(|t| u32::try_from(t.len()).unwrap_or(u32::MAX));
        let finish_reason = choice.finish_reason;
        if text.is_empty() && logprob_tokens.unwrap_or(0) == 0 {
            out.push(Chunk::Empty { finish_reason });
        } else {
            out.push(Chunk::Text { text: text.into_owned(), tokens: logprob_tokens, finish_reason });
        }
    }
    if let Some(completion_tokens) = chunk.usage.as_ref().and_then(|u| u.completion_tokens) {
        out.push(Chunk::Usage { prompt_tokens: chunk.usage.and_then(|u| u.prompt_tokens), completion_tokens });
    }
    if let Some(predicted_n) = chunk.timings.as_ref().and_then(|t| t.predicted_n) {
        out.push(Chunk::Timings { prompt_n: chunk.timings.and_then(|t| t.prompt_n), predicted_n });
    }
    Ok(out)
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_sharing_one() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata:\n\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut r = EventReader::default();
            let mut events = r.feed(&stream[..split]);
            events.extend(r.feed(&stream[split..]));
            assert_eq!(events, ["{\"a\":1}", "two\nlines", "[DONE]"], "split at {split}");
            assert!(!r.has_partial());
        }
        let mut r = EventReader::default();
        assert!(r.feed(b"data: {\"cho").is_empty());
        assert!(r.has_partial(), "a cut mid-event is visible");
    }

    #[test]
    fn chunks_of_completions_and_chat() {
        let text = r#"{"choices":[{"text":"Hel","finish_reason":null}]}"#;
        assert_eq!(
            interpret(text).expect("ok"),
            [Chunk::Text { text: "Hel".into(), tokens: None, finish_reason: None }]
        );
        let role_only = r#"{"choices":[{"delta":{"role":"assistant"},"finish_reason":null}]}"#;
        assert_eq!(interpret(role_only).expect("ok"), [Chunk::Empty { finish_reason: None }]);
        let empty = r#"{"choices":[{"delta":{"content":""},"finish_reason":"stop"}]}"#;
        assert_eq!(interpret(empty).expect("ok"), [Chunk::Empty { finish_reason: Some("stop".into()) }]);
        let chat = r#"{"choices":[{"delta":{"content":"lo"},"logprobs":{"content":[{"token":"l"},{"token":"o"}]}}]}"#;
        assert_eq!(
            interpret(chat).expect("ok"),
            [Chunk::Text { text: "lo".into(), tokens: Some(2), finish_reason: None }]
        );
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":12,"total_tokens":19}}"#;
        assert_eq!(interpret(usage).expect("ok"), [Chunk::Usage { prompt_tokens: Some(7), completion_tokens: 12 }]);
        let timings = r#"{"choices":[{"text":"","finish_reason":"length"}],"timings":{"prompt_n":5,"predicted_n":9}}"#;
        assert_eq!(
            interpret(timings).expect("ok"),
            [
                Chunk::Empty { finish_reason: Some("length".into()) },
                Chunk::Timings { prompt_n: Some(5), predicted_n: 9 }
            ]
        );
        assert_eq!(interpret(" [DONE] ").expect("ok"), [Chunk::Done]);
        assert_eq!(interpret(r#"{"error":{"message":"boom","type":"x"}}"#).expect("ok"), [Chunk::Error("boom".into())]);
        assert!(interpret("{not json").is_err());
    }
}
