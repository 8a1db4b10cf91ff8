//! `requests.parquet`: one row per measured request of a server job (docs/engines.md
//! lists the columns). Token event times are ms after the request was sent, so the first
//! is its TTFT; a list the server did not let us know exactly is null.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::workload::RequestMetrics;

const SCHEMA: &str = "
message requests {
  required int32 request;
  optional binary prompt (STRING);
  optional double scheduled_s;
  required double sent_s;
  optional double ttft_ms;
  required double e2el_ms;
  optional double tpot_ms;
  optional int64 input_tokens;
  optional int64 output_tokens;
  optional group token_events_ms (LIST) { repeated group list { required double element; } }
  optional group tokens_per_event (LIST) { repeated group list { required int32 element; } }
  optional int32 status;
  optional binary error (STRING);
  optional double energy_j;
  required binary token_count_method (STRING);
}
";

/// One row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub request: i32,
    pub prompt: Option<String>,
    pub scheduled_s: Option<f64>,
    pub sent_s: f64,
    pub ttft_ms: Option<f64>,
    pub e2el_ms: f64,
    pub tpot_ms: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub token_events_ms: Vec<f64>,
    pub tokens_per_event: Option<Vec<i32>>,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub energy_j: Option<f64>,
    pub token_count_method: String,
}

/// The rows of a job's server requests; `t0` is the window's start (engine clock).
pub fn rows(requests: &[RequestMetrics], per_request_j: &[Option<f64>], t0: f64) -> Vec<Row> {
    requests
        .iter()
        .filter_map(|r| r.served.as_deref())
        .enumerate()
        .map(|(i, s)| {
            let (ttft, e2el, tpot) = crate::serving::request_latencies(s);
            let ok = s.error.is_none();
            Row {
                request: s.index as i32,
                prompt: Some(s.prompt.clone()),
                scheduled_s: s.scheduled.map(|t| t - t0),
                sent_s: s.sent - t0,
                ttft_ms: ttft,
                e2el_ms: e2el,
                tpot_ms: tpot.filter(|_| ok),
                input_tokens: s.input_tokens.filter(|_| ok).map(|n| n as i64),
                // A failed request's partial tokens are not a completed count.
                output_tokens: s.output_tokens.filter(|_| ok).map(|n| n as i64),
                token_events_ms: s.events.iter().map(|(t, _)| (t - s.sent) * 1000.0).collect(),
                tokens_per_event: s.events.iter().map(|(_, n)| n.map(|n| n as i32)).collect::<Option<Vec<i32>>>(),
                status: s.status.map(i32::from),
                error: s.error.clone(),
                energy_j: per_request_j.get(i).copied().flatten(),
                token_count_method: s.method.name().to_owned(),
            }
        })
        .collect()
}

/// A list column: values, definition levels (0 null list, 1 empty, 2 an element) and
/// repetition levels (0 starts a row, 1 continues it).
fn list<T: Clone>(rows: &[Row], f: impl Fn(&Row) -> Option<Vec<T>>) -> (Vec<T>, Vec<i16>, Vec<i16>) {
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        match f(r) {
            None => {
                def.push(0);
                rep.push(0);
            }
            Some(items) if items.is_empty() => {
                def.push(1);
                rep.push(0);
            }
            Some(items) => {
                for (i, v) in items.into_iter().enumerate() {
                    values.push(v);
                    def.push(2);
                    rep.push(i16::from(i > 0));
                }
            }
        }
    }
    (values, def, rep)
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

/// Encodes rows as a Parquet file.
pub fn to_parquet(rows: &[Row]) -> parquet::errors::Result<Vec<u8>> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::UNCOMPRESSED).build());
    let mut buffer = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buffer, schema, props)?;
    let mut group = writer.next_row_group()?;
    let mut index = 0;
    while let Some(mut col) = group.next_column()? {
        match (index, col.untyped()) {
            (0, ColumnWriter::Int32ColumnWriter(w)) => {
                let v: Vec<i32> = rows.iter().map(|r| r.request).collect();
                w.write_batch(&v, None, None)?;
            }
            (1 | 12 | 14, ColumnWriter::ByteArrayColumnWriter(w)) => {
                let pick: fn(&Row) -> Option<ByteArray> = match index {
                    1 => |r| r.prompt.as_deref().map(text),
                    12 => |r| r.error.as_deref().map(text),
                    _ => |r| Some(text(&r.token_count_method)),
                };
                let (v, l) = crate::timeseries::nullable(rows, pick);
                w.write_batch(&v, (index != 14).then_some(&l[..]), None)?;
            }
            (2..=6 | 13, ColumnWriter::DoubleColumnWriter(w)) => {
                let pick: fn(&Row) -> Option<f64> = match index {
                    2 => |r| r.scheduled_s,
                    3 => |r| Some(r.sent_s),
                    4 => |r| r.ttft_ms,
                    5 => |r| Some(r.e2el_ms),
                    6 => |r| r.tpot_ms,
                    _ => |r| r.energy_j,
                };
                let (v, l) = crate::timeseries::nullable(rows, pick);
                w.write_batch(&v, (!matches!(index, 3 | 5)).then_some(&l[..]), None)?;
            }
            (7 | 8, ColumnWriter::Int64ColumnWriter(w)) => {
                let pick: fn(&Row) -> Option<i64> = if index == 7 { |r| r.input_tokens } else { |r| r.output_tokens };
                let (v, l) = crate::timeseries::nullable(rows, pick);
                w.write_batch(&v, Some(&l), None)?;
            }
            (9, ColumnWriter::DoubleColumnWriter(w)) => {
                let (v, d, r) = list(rows, |r| Some(r.token_events_ms.clone()));
                w.write_batch(&v, Some(&d), Some(&r))?;
            }
            (10, ColumnWriter::Int32ColumnWriter(w)) => {
                let (v, d, r) = list(rows, |r| r.tokens_per_event.clone());
                w.write_batch(&v, Some(&d), Some(&r))?;
            }
            (11, ColumnWriter::Int32ColumnWriter(w)) => {
                let (v, l) = crate::timeseries::nullable(rows, |r| r.status);
                w.write_batch(&v, Some(&l), None)?;
            }
            _ => return Err(parquet::errors::ParquetError::General(format!("unexpected column {index}"))),
        }
        col.close()?;
        index += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_null_empty_and_full_lists() {
        let row = |i: i32, events: Vec<f64>, per: Option<Vec<i32>>| Row {
            request: i,
            prompt: Some(format!("p{i}")),
            scheduled_s: None,
            sent_s: 0.5,
            ttft_ms: events.first().copied(),
            e2el_ms: 10.0,
            tpot_ms: None,
            input_tokens: Some(3),
            output_tokens: Some(2),
            token_events_ms: events,
            tokens_per_event: per,
            status: Some(200),
            error: None,
            energy_j: None,
            token_count_method: "usage".to_owned(),
        };
        let rows = [row(0, vec![1.0, 2.0], Some(vec![1, 1])), row(1, vec![], None), row(2, vec![3.0], Some(vec![2]))];
        let bytes = to_parquet(&rows).expect("encodes");
        assert_eq!(&bytes[..4], b"PAR1");
        let (v, d, r) = list(&rows, |r| r.tokens_per_event.clone());
        assert_eq!((v, d, r), (vec![1, 1, 2], vec![2, 2, 0, 2], vec![0, 1, 0, 0]));
    }
}
