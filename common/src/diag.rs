//! Diagnostics: a problem in an input file, where it is, and how to fix it.
//!
//! Rendered like a compiler error so `file:line:col` is clickable in editors and
//! terminals:
//!
//! ```text
//! error: unknown field `batch_sise`
//!   --> sweep.yaml:3:3
//!    |
//!  3 |   batch_sise: 4
//!    |   ^^^^^^^^^^
//!    = help: did you mean `batch_size`?
//! ```

use std::fmt::Write as _;

use crate::yaml::{Sources, Span};

/// One problem in an input, with an optional hint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diagnostic {
    pub span: Option<Span>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn at(span: Span, message: impl Into<String>) -> Self {
        Diagnostic { span: Some(span), message: message.into(), help: None }
    }

    pub fn nowhere(message: impl Into<String>) -> Self {
        Diagnostic { span: None, message: message.into(), help: None }
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    #[must_use]
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    /// `file:line:col` of this diagnostic, when it has a place.
    pub fn location(&self, sources: &Sources) -> Option<String> {
        let span = self.span?;
        let name = sources.get(span.source).map_or("<input>", |s| s.name.as_str());
        Some(format!("{name}:{}:{}", span.line, span.col))
    }

    /// Renders the diagnostic with the offending source line and a caret underline.
    pub fn render(&self, sources: &Sources) -> String {
        self.render_as("error", sources)
    }

    /// Renders with another level word (`warning`).
    pub fn render_as(&self, level: &str, sources: &Sources) -> String {
        let mut out = format!("{level}: {}\n", self.message);
        if let Some(span) = self.span {
            let location = self.location(sources).unwrap_or_default();
            let line_text = sources
                .get(span.source)
                .and_then(|s| s.text.lines().nth(span.line.saturating_sub(1) as usize).map(str::to_owned));
            let number = span.line.to_string();
            let pad = " ".repeat(number.len());
            let _ = writeln!(out, "{pad}--> {location}");
            if let Some(line_text) = line_text {
                let shown: String = line_text.chars().take(200).collect();
                let width = shown.chars().count();
                let start = (span.col as usize).saturating_sub(1).min(width);
                let len = (span.len as usize).clamp(1, (width - start).max(1));
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{number} | {shown}");
                let _ = writeln!(out, "{pad} | {}{}", " ".repeat(start), "^".repeat(len));
            }
            if let Some(help) = &self.help {
                let _ = writeln!(out, "{pad} = help: {help}");
            }
        } else if let Some(help) = &self.help {
            let _ = writeln!(out, "  = help: {help}");
        }
        out
    }
}

/// Renders many diagnostics, sorted by place, with a closing count.
pub fn render_all(diagnostics: &[Diagnostic], sources: &Sources) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.span.map(|s| (s.source, s.line, s.col)), d.message.clone()));
    sorted.dedup();
    let mut out = String::new();
    for d in &sorted {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let n = sorted.len();
    let _ = writeln!(out, "{n} error{}", if n == 1 { "" } else { "s" });
    out
}

/// "did you mean `x`?" for a misspelt name, from the names that would have been valid.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let wrong_lower = wrong.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&wrong_lower, &candidate.to_lowercase());
        // The last dotted segment alone also counts, so `temprature` finds
        // `decoding.temperature`.
        let tail = candidate.rsplit('.').next().unwrap_or(candidate);
        let tail_score = strsim::jaro_winkler(&wrong_lower, &tail.to_lowercase()) - 0.02;
        let score = score.max(tail_score);
        if score > 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, name)| format!("did you mean `{name}`?"))
}

/// Lists names for a help line: "`a`, `b` or `c`".
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|n| format!("`{n}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::SourceId;

    #[test]
    fn renders_location_line_and_caret() {
        let mut sources = Sources::default();
        let id = sources.add("s.yaml", "model: m\n  batch_sise: 4\n");
        let d = Diagnostic::at(Span { source: id, line: 2, col: 3, len: 10 }, "unknown field `batch_sise`")
            .with_help("did you mean `batch_size`?");
        let text = d.render(&sources);
        assert_eq!(
            text,
            "error: unknown field `batch_sise`\n --> s.yaml:2:3\n  |\n2 |   batch_sise: 4\n  |   ^^^^^^^^^^\n  = help: did you mean `batch_size`?\n"
        );
        let _ = SourceId(0);
    }

    #[test]
    fn suggestions() {
        let fields = ["batch_size", "max_output_tokens", "decoding.temperature"];
        assert_eq!(did_you_mean("batch_sise", fields).as_deref(), Some("did you mean `batch_size`?"));
        assert_eq!(did_you_mean("temprature", fields).as_deref(), Some("did you mean `decoding.temperature`?"));
        assert_eq!(did_you_mean("zzz", fields), None);
    }

    #[test]
    fn lists() {
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(one_of(&["a"]), "`a`");
    }
}
