//! The fields of `engine: openai`: the server to start (or attach to), the API the load
//! uses, and the load pattern. All are `None` in the spec of any other engine, and left
//! out of its canonical form, so adding them changed no existing job id.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::raw::{Checker, RawExperiment};
use super::Engine;
use crate::de::Spanned;

type S<T> = Option<Spanned<T>>;

/// Defaults of the server and load fields (docs/sweep-format.md quotes them).
pub mod defaults {
    pub const READY_TIMEOUT_S: f64 = 600.0;
    pub const CONCURRENCY: u32 = 1;
    pub const BURSTINESS: f64 = 1.0;
    pub const REQUEST_TIMEOUT_S: f64 = 600.0;
    /// Past this share of failed requests the job fails (its numbers would describe errors).
    pub const MAX_ERROR_RATE: f64 = 0.1;
}

/// Which OpenAI endpoint the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions`, the prompt as one user message.
    Chat,
    /// `POST /v1/completions`, the prompt as text.
    Completions,
}

/// The server a job measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Started by the agent, without a shell; `{port}`, `{model}`, `{gpus}` (`0,1`) and `{gpu_count}` are filled in.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Appended to `command` as `--name value` (`true`: `--name` alone; `false`: left out).
    pub options: BTreeMap<String, serde_json::Value>,
    pub ready_timeout_s: f64,
    /// Instead of `command`: a server already running (`http://host:port`).
    pub url: Option<String>,
}

/// Requests per second of an open loop; `inf` sends every request at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl Rate {
    pub fn is_infinite(self) -> bool {
        self.0.is_infinite()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_infinite() {
            f.write_str("inf")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

// JSON has no infinity: `inf` is written as the string "inf".
impl Serialize for Rate {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        if self.is_infinite() {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("requests per second (a number > 0) or `inf`")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rate, E> {
                Ok(Rate(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(Rate(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                Ok(Rate(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                match v {
                    "inf" | ".inf" | "infinity" => Ok(Rate(f64::INFINITY)),
                    _ => Err(E::custom(format!("expected requests per second (a number > 0) or `inf`, found `{v}`"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Service-level objectives: a request within all of them counts towards goodput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub tpot_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
}

/// The load pattern: a closed loop (`concurrency` requests in flight) or an open loop
/// (`request_rate` arrivals per second, gamma-distributed gaps of shape `burstiness`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Open loop only: gamma shape of the gaps (1 = Poisson).
    pub burstiness: Option<f64>,
    pub concurrency: Option<u32>,
    /// Instead of `requests`: send for this long, then let the requests in flight finish.
    pub duration_s: Option<f64>,
    pub max_error_rate: f64,
    pub request_rate: Option<Rate>,
    pub requests: Option<u32>,
    /// Seeds the arrival schedule and the prompt order.
    pub seed: u64,
    pub slo: Option<Slo>,
    /// Per request, from sending to the last byte.
    pub timeout_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: S<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, Spanned<serde_json::Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout_s: S<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ms: S<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: S<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burstiness: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: S<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<RawSlo>,
}

fn overlay_leaf<T: Clone>(mine: &mut S<T>, top: &S<T>) {
    if top.is_some() {
        mine.clone_from(top);
    }
}

fn overlay_map<V: Clone>(mine: &mut Option<BTreeMap<String, V>>, top: &Option<BTreeMap<String, V>>) {
    if let Some(entries) = top {
        let map = mine.get_or_insert_with(BTreeMap::new);
        for (k, v) in entries {
            map.insert(k.clone(), v.clone());
        }
    }
}

impl RawServer {
    /// `top`'s fields win; `options` and `env` merge key by key.
    pub fn overlay(&mut self, top: &RawServer) {
        overlay_leaf(&mut self.command, &top.command);
        overlay_leaf(&mut self.url, &top.url);
        overlay_leaf(&mut self.ready_timeout_s, &top.ready_timeout_s);
        overlay_map(&mut self.options, &top.options);
        overlay_map(&mut self.env, &top.env);
    }
}

impl RawLoad {
    pub fn overlay(&mut self, top: &RawLoad) {
        overlay_leaf(&mut self.concurrency, &top.concurrency);
        overlay_leaf(&mut self.request_rate, &top.request_rate);
        overlay_leaf(&mut self.burstiness, &top.burstiness);
        overlay_leaf(&mut self.requests, &top.requests);
        overlay_leaf(&mut self.duration_s, &top.duration_s);
        overlay_leaf(&mut self.seed, &top.seed);
        overlay_leaf(&mut self.timeout_s, &top.timeout_s);
        overlay_leaf(&mut self.max_error_rate, &top.max_error_rate);
        match (&mut self.slo, &top.slo) {
            (_, None) => {}
            (None, Some(t)) => self.slo = Some(t.clone()),
            (Some(b), Some(t)) => {
                overlay_leaf(&mut b.ttft_ms, &t.ttft_ms);
                overlay_leaf(&mut b.tpot_ms, &t.tpot_ms);
            }
        }
    }
}

impl Server {
    /// The program and arguments to start: `command` with the placeholders filled, then
    /// `options` as flags. Each placeholder is replaced inside an argument, never split
    /// into several: no value can add arguments. `gpus` is the job's GPU list (`0,1`).
    pub fn argv(&self, port: u16, model: &str, gpus: &str) -> Option<Vec<String>> {
        let count = if gpus.is_empty() { 0 } else { gpus.split(',').count() };
        let fill = |arg: &str| {
            arg.replace("{port}", &port.to_string())
                .replace("{model}", model)
                .replace("{gpu_count}", &count.to_string())
                .replace("{gpus}", gpus)
        };
        let mut argv: Vec<String> = self.command.as_ref()?.iter().map(|a| fill(a)).collect();
        for (name, value) in &self.options {
            let flag = if name.starts_with('-') { name.clone() } else { format!("--{name}") };
            match value {
                serde_json::Value::Bool(false) => {}
                serde_json::Value::Bool(true) => argv.push(flag),
                serde_json::Value::String(s) => argv.extend([flag, fill(s)]),
                other => argv.extend([flag, other.to_string()]),
            }
        }
        Some(argv)
    }
}

/// Checks the openai fields of one experiment (stage two of reading).
impl Checker {
    pub(super) fn openai(&mut self, raw: &RawExperiment, engine: Engine, n_prompts: u32) -> OpenaiFields {
        if engine != Engine::Openai {
            // An empty section (`server: {}`) has no span of its own: the engine's stands in.
            let at =
                |set: bool, span: Option<crate::yaml::Span>| set.then(|| span.unwrap_or(self.span_of(&raw.engine)));
            let stray = [
                ("server", at(raw.server.is_some(), raw.server.as_ref().and_then(first_server_span))),
                ("load", at(raw.load.is_some(), raw.load.as_ref().and_then(first_load_span))),
                ("api", raw.api.as_ref().map(|a| a.span)),
            ];
            for (name, span) in stray {
                if let Some(span) = span {
                    self.fail(
                        span,
                        format!("`{name}` is only used with `engine: openai`"),
                        Some("set `engine: openai`, or remove it"),
                    );
                }
            }
            return (None, None, None);
        }
        let api = raw.api.as_ref().map_or(Api::Completions, |a| a.value);
        let server = self.server(raw.server.as_ref().unwrap_or(&RawServer::default()), raw);
        let load = self.load(raw.load.as_ref().unwrap_or(&RawLoad::default()), n_prompts);
        (Some(api), Some(server), Some(load))
    }

    fn server(&mut self, raw: &RawServer, whole: &RawExperiment) -> Server {
        let command = self.argv("server.command", &raw.command);
        let url = raw.url.as_ref().map(|u| u.value.trim_end_matches('/').to_owned());
        match (&raw.command, &raw.url) {
            (None, None) => {
                let span = self.span_of(&whole.engine);
                self.fail(
                    span,
                    "`engine: openai` needs `server.command` (a server the agent starts) or `server.url` (one already running)".to_owned(),
                    Some("e.g. `server: {command: [vllm, serve, \"{model}\", --port, \"{port}\"]}`"),
                );
            }
            (Some(_), Some(u)) => self.fail(
                u.span,
                "`server.url` and `server.command` exclude each other".to_owned(),
                Some("give `command` for a server the agent starts, or `url` to attach to a running one"),
            ),
            (Some(c), None) if !c.value.iter().any(|a| a.contains("{port}")) => self.fail(
                c.span,
                "`server.command` never names `{port}`: the agent could not know where the server listens".to_owned(),
                Some("pass the port the agent picks, e.g. `--port, \"{port}\"`"),
            ),
            (None, Some(u)) if !u.value.starts_with("http://") => self.fail(
                u.span,
                format!("`server.url` must start with `http://`, found `{}`", u.value),
                Some("llem talks plain HTTP to servers on the node (use an SSH tunnel for a remote one)"),
            ),
            _ => {}
        }
        if url.is_some() {
            for (name, set) in [
                ("options", raw.options.as_ref().map(|o| o.values().next().map(|v| v.span))),
                ("env", raw.env.as_ref().map(|o| o.values().next().map(|v| v.span))),
            ] {
                if let Some(span) = set.flatten() {
                    self.fail(
                        span,
                        format!("`server.{name}` applies to a server the agent starts, not to `server.url`"),
                        None,
                    );
                }
            }
        }
        let mut options = BTreeMap::new();
        for (name, value) in raw.options.iter().flatten() {
            match &value.value {
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) | serde_json::Value::String(_) => {
                    options.insert(name.clone(), value.value.clone());
                }
                _ => self.fail(
                    value.span,
                    format!("`server.options.{name}` must be a number, a string or true/false"),
                    Some("true adds the flag alone, false leaves it out"),
                ),
            }
        }
        let env = raw.env.iter().flatten().map(|(k, v)| (k.clone(), v.value.clone())).collect();
        let ready_timeout_s =
            self.number("server.ready_timeout_s", &raw.ready_timeout_s, defaults::READY_TIMEOUT_S, 0.0, false, None);
        Server { command, env, options, ready_timeout_s, url }
    }

    fn load(&mut self, raw: &RawLoad, n_prompts: u32) -> Load {
        if let (Some(_), Some(r)) = (&raw.concurrency, &raw.request_rate) {
            self.fail(
                r.span,
                "`load.request_rate` and `load.concurrency` exclude each other".to_owned(),
                Some("`concurrency` keeps that many requests in flight (closed loop); `request_rate` sends on a schedule (open loop)"),
            );
        }
        if let (Some(_), Some(d)) = (&raw.requests, &raw.duration_s) {
            self.fail(d.span, "`load.duration_s` and `load.requests` exclude each other".to_owned(), None);
        }
        if let (Some(r), Some(_)) = (raw.request_rate.as_ref().filter(|r| r.value.is_infinite()), &raw.duration_s) {
            self.fail(
                r.span,
                "`load.request_rate: inf` sends every request at once, so `load.duration_s` cannot bound it".to_owned(),
                Some("give `load.requests` (how many to send at once), or a finite rate"),
            );
        }
        let request_rate = raw.request_rate.as_ref().map(|r| {
            if r.value.0.is_nan() || r.value.0 <= 0.0 {
                self.fail(r.span, format!("`load.request_rate` must be > 0 or `inf`, found {}", r.value), None);
            }
            r.value
        });
        let concurrency = match (&raw.concurrency, &request_rate) {
            (_, Some(_)) => None,
            (c, None) => Some(self.count("load.concurrency", c, defaults::CONCURRENCY, 1)),
        };
        let burstiness = match (&raw.burstiness, request_rate) {
            (Some(b), None) => {
                self.fail(
                    b.span,
                    "`load.burstiness` shapes an open loop: it needs `load.request_rate`".to_owned(),
                    None,
                );
                None
            }
            (b, Some(_)) => Some(self.number("load.burstiness", b, defaults::BURSTINESS, 0.0, false, None)),
            (None, None) => None,
        };
        let duration_s =
            raw.duration_s.as_ref().map(|_| self.number("load.duration_s", &raw.duration_s, 1.0, 0.0, false, None));
        let requests = match (&raw.requests, duration_s) {
            (_, Some(_)) => None,
            (r, None) => Some(self.count("load.requests", r, n_prompts, 1)),
        };
        let slo = raw.slo.as_ref().map(|s| Slo {
            tpot_ms: s.tpot_ms.as_ref().map(|_| self.number("load.slo.tpot_ms", &s.tpot_ms, 0.0, 0.0, false, None)),
            ttft_ms: s.ttft_ms.as_ref().map(|_| self.number("load.slo.ttft_ms", &s.ttft_ms, 0.0, 0.0, false, None)),
        });
        Load {
            burstiness,
            concurrency,
            duration_s,
            max_error_rate: self.number(
                "load.max_error_rate",
                &raw.max_error_rate,
                defaults::MAX_ERROR_RATE,
                0.0,
                true,
                Some(1.0),
            ),
            request_rate,
            requests,
            seed: raw.seed.as_ref().map_or(0, |s| s.value),
            slo,
            timeout_s: self.number("load.timeout_s", &raw.timeout_s, defaults::REQUEST_TIMEOUT_S, 0.0, false, None),
        }
    }
}

/// What [`Checker::openai`] gives: `api`, `server`, `load` (all `None` for other engines).
pub(super) type OpenaiFields = (Option<Api>, Option<Server>, Option<Load>);

fn first_server_span(s: &RawServer) -> Option<crate::yaml::Span> {
    s.command
        .as_ref()
        .map(|c| c.span)
        .or(s.url.as_ref().map(|u| u.span))
        .or(s.ready_timeout_s.as_ref().map(|r| r.span))
        .or(s.options.as_ref().and_then(|o| o.values().next().map(|v| v.span)))
        .or(s.env.as_ref().and_then(|o| o.values().next().map(|v| v.span)))
}

fn first_load_span(l: &RawLoad) -> Option<crate::yaml::Span> {
    [
        &l.concurrency.as_ref().map(|c| c.span),
        &l.request_rate.as_ref().map(|c| c.span),
        &l.requests.as_ref().map(|c| c.span),
        &l.duration_s.as_ref().map(|c| c.span),
        &l.seed.as_ref().map(|c| c.span),
        &l.burstiness.as_ref().map(|c| c.span),
        &l.timeout_s.as_ref().map(|c| c.span),
        &l.max_error_rate.as_ref().map(|c| c.span),
    ]
    .into_iter()
    .flatten()
    .next()
    .copied()
    .or(l.slo.as_ref().and_then(|s| s.ttft_ms.as_ref().or(s.tpot_ms.as_ref()).map(|v| v.span)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(command: &[&str], options: &[(&str, serde_json::Value)]) -> Server {
        Server {
            command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
            env: BTreeMap::new(),
            options: options.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            ready_timeout_s: 1.0,
            url: None,
        }
    }

    #[test]
    fn argv_fills_placeholders_and_appends_options() {
        let s = server(
            &["vllm", "serve", "{model}", "--port", "{port}"],
            &[
                ("max-num-seqs", serde_json::json!(64)),
                ("enforce-eager", serde_json::json!(true)),
                ("off", serde_json::json!(false)),
                ("-tp", serde_json::json!("{gpu_count}")),
                ("visible", serde_json::json!("{gpus}")),
            ],
        );
        let argv = s.argv(8123, "Qwen/Q 7B; rm -rf /", "0,1").expect("argv");
        assert_eq!(
            argv,
            [
                "vllm",
                "serve",
                "Qwen/Q 7B; rm -rf /",
                "--port",
                "8123",
                "-tp",
                "2",
                "--enforce-eager",
                "--max-num-seqs",
                "64",
                "--visible",
                "0,1"
            ]
        );
    }

    fn validate(text: &str) -> Result<crate::spec::ExperimentSpec, Vec<String>> {
        let node = crate::yaml::parse(crate::yaml::SourceId(0), text).expect("yaml");
        let raw: RawExperiment =
            crate::de::from_node(&node, "").map_err(|e| e.into_iter().map(|d| d.message).collect::<Vec<_>>())?;
        raw.validate(node.span).map_err(|e| e.into_iter().map(|d| d.message).collect())
    }

    #[test]
    fn the_rules_between_openai_fields() {
        let errors = validate("model: m\nengine: openai\n").expect_err("no server");
        assert!(errors[0].contains("needs `server.command`"), "{errors:?}");
        let errors =
            validate("model: m\nengine: openai\nserver: {command: [s], url: \"http://x:1\"}\n").expect_err("both");
        assert!(errors.iter().any(|e| e.contains("exclude each other")), "{errors:?}");
        let errors = validate("model: m\nengine: openai\nserver: {command: [s]}\n").expect_err("no port");
        assert!(errors.iter().any(|e| e.contains("never names `{port}`")), "{errors:?}");
        let errors =
            validate("model: m\nengine: openai\nserver: {url: \"https://x:1\", options: {a: 1}}\n").expect_err("https");
        assert!(errors.iter().any(|e| e.contains("must start with `http://`")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("not to `server.url`")), "{errors:?}");
        let errors = validate(
            "model: m\nengine: openai\nserver: {url: \"http://x:1\"}\nload: {concurrency: 2, request_rate: 1, requests: 3, duration_s: 2, burstiness: 0}\n",
        )
        .expect_err("load");
        assert_eq!(errors.len(), 3, "{errors:?}");
        let errors = validate("model: m\nload: {concurrency: 2}\napi: chat\n").expect_err("not openai");
        assert_eq!(errors, ["`load` is only used with `engine: openai`", "`api` is only used with `engine: openai`"]);
        let errors = validate("model: m\ngpus: 2\n").expect_err("cpu");
        assert!(errors.iter().any(|e| e.contains("`gpus: 2` needs `device: cuda`")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("the candle engine runs on one GPU")), "{errors:?}");
        let errors = validate("model: m\nengine: synthetic\nserver: {}\n").expect_err("empty section");
        assert_eq!(errors, ["`server` is only used with `engine: openai`"]);
        let errors = validate(
            "model: m\nengine: openai\nserver: {url: \"http://h:1\"}\nload: {request_rate: inf, duration_s: 3}\n",
        )
        .expect_err("inf with a duration");
        assert!(errors[0].contains("cannot bound it"), "{errors:?}");
        let errors = validate("model: m\nengine: openai\nserver: {url: \"http://x:1\"}\nload: {request_rate: -1}\n")
            .expect_err("rate");
        assert!(errors[0].contains("must be > 0 or `inf`"), "{errors:?}");
    }

    #[test]
    fn defaults_and_a_pinned_openai_id() {
        let spec = validate("model: m\nengine: openai\nn_prompts: 7\nserver: {command: [s, --port, \"{port}\"]}\n")
            .expect("valid");
        let load = spec.load.as_ref().expect("load");
        assert_eq!((load.concurrency, load.requests, load.request_rate), (Some(1), Some(7), None));
        assert_eq!(spec.api, Some(Api::Completions));
        assert_eq!(spec.server.as_ref().map(|s| s.ready_timeout_s), Some(defaults::READY_TIMEOUT_S));
        let open = validate(
            "model: m\nengine: openai\nserver: {url: \"http://h:1/\"}\nload: {request_rate: inf, requests: 5}\n",
        )
        .expect("valid");
        let load = open.load.as_ref().expect("load");
        assert!(load.request_rate.is_some_and(Rate::is_infinite));
        assert_eq!((load.burstiness, load.requests, load.concurrency), (Some(1.0), Some(5), None));
        assert_eq!(open.server.as_ref().and_then(|s| s.url.as_deref()), Some("http://h:1"), "no trailing slash");
        // The id of an openai job is part of the format from now on.
        assert_eq!(crate::spec::job_id(&spec.hash(), 1), "665a4af1622f813a-c1");
    }

    #[test]
    fn rates_round_trip_through_json() {
        assert_eq!(serde_json::to_string(&Rate(f64::INFINITY)).expect("json"), r#""inf""#);
        assert_eq!(serde_json::to_string(&Rate(2.5)).expect("json"), "2.5");
        let back: Rate = serde_json::from_str(r#""inf""#).expect("inf");
        assert!(back.is_infinite());
        let back: Rate = serde_json::from_str("4").expect("int");
        assert_eq!(back, Rate(4.0));
    }
}
