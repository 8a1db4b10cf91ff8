//! `timeseries.parquet`: one row per device per second of the measured window, in the
//! schema of the original LLenergyMeasure files so existing analysis code reads ours:
//!
//! `timestamp_s f64, gpu_index i32, power_w f32, temperature_c f32, memory_used_mb f32,
//! memory_total_mb f32, sm_utilisation_pct f32, throttle_reasons i64`
//!
//! `timestamp_s` is the start of the second, counted from the start of the measured
//! window. Every column is nullable; a value the sensor cannot give is null, never 0.
//! `gpu_index` is -1 for the host CPU (RAPL).

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::writer::ColumnWriter;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::sampler::Sample;
use crate::sensor::SensedDevice;

pub const SCHEMA: &str = "message timeseries {
  OPTIONAL DOUBLE timestamp_s;
  OPTIONAL INT32 gpu_index;
  OPTIONAL FLOAT power_w;
  OPTIONAL FLOAT temperature_c;
  OPTIONAL FLOAT memory_used_mb;
  OPTIONAL FLOAT memory_total_mb;
  OPTIONAL FLOAT sm_utilisation_pct;
  OPTIONAL INT64 throttle_reasons;
}";

/// One row: a device's second.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub timestamp_s: f64,
    pub gpu_index: i32,
    pub power_w: Option<f32>,
    pub temperature_c: Option<f32>,
    pub memory_used_mb: Option<f32>,
    pub memory_total_mb: Option<f32>,
    pub sm_utilisation_pct: Option<f32>,
    pub throttle_reasons: Option<i64>,
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f32> {
    let (sum, n) = values.flatten().fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| (sum / f64::from(n)) as f32)
}

/// Averages samples (times relative to the window start) into one row per device per
/// whole second; throttle reasons are OR-ed over the second.
pub fn downsample(window: &[Sample], devices: &[SensedDevice]) -> Vec<Row> {
    let Some(last) = window.last() else { return Vec::new() };
    let seconds = last.t.max(0.0).floor() as i64 + 1;
    let mut rows = Vec::new();
    for second in 0..seconds {
        let in_second: Vec<&Sample> =
            window.iter().filter(|s| s.t >= second as f64 && s.t < (second + 1) as f64).collect();
        if in_second.is_empty() {
            continue;
        }
        for (d, device) in devices.iter().enumerate() {
            let field = |f: fn(&crate::sensor::DeviceReading) -> Option<f64>| {
                mean(in_second.iter().map(|s| s.readings.get(d).and_then(f)))
            };
            let throttle = in_second
                .iter()
                .filter_map(|s| s.readings.get(d).and_then(|r| r.throttle_reasons))
                .reduce(|a, b| a | b)
                .map(|bits| bits as i64);
            rows.push(Row {
                timestamp_s: second as f64,
                gpu_index: device.index,
                power_w: field(|r| r.power_w),
                temperature_c: field(|r| r.temperature_c),
                memory_used_mb: field(|r| r.memory_used_mb),
                memory_total_mb: field(|r| r.memory_total_mb),
                sm_utilisation_pct: field(|r| r.utilisation_pct),
                throttle_reasons: throttle,
            });
        }
    }
    rows
}

/// Values and definition levels (1 present, 0 null) of a nullable column, for any rows.
pub(crate) fn nullable<R, T>(rows: &[R], f: impl Fn(&R) -> Option<T>) -> (Vec<T>, Vec<i16>) {
    let mut values = Vec::with_capacity(rows.len());
    let levels = rows
        .iter()
        .map(|r| match f(r) {
            Some(v) => {
                values.push(v);
                1
            }
            None => 0,
        })
        .collect();
    (values, levels)
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
            (0, ColumnWriter::DoubleColumnWriter(w)) => {
                let (v, l) = nullable(rows, |r| Some(r.timestamp_s));
                w.write_batch(&v, Some(&l), None)?;
            }
            (1, ColumnWriter::Int32ColumnWriter(w)) => {
                let (v, l) = nullable(rows, |r| Some(r.gpu_index));
                w.write_batch(&v, Some(&l), None)?;
            }
            (2..=6, ColumnWriter::FloatColumnWriter(w)) => {
                let pick: fn(&Row) -> Option<f32> = match index {
                    2 => |r| r.power_w,
                    3 => |r| r.temperature_c,
                    4 => |r| r.memory_used_mb,
                    5 => |r| r.memory_total_mb,
                    _ => |r| r.sm_utilisation_pct,
                };
                let (v, l) = nullable(rows, pick);
                w.write_batch(&v, Some(&l), None)?;
            }
            (7, ColumnWriter::Int64ColumnWriter(w)) => {
                let (v, l) = nullable(rows, |r| r.throttle_reasons);
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
    use crate::sensor::DeviceReading;

    #[test]
    fn one_row_per_device_per_second() {
        let dev = |i| SensedDevice { index: i, name: String::new(), key: String::new() };
        let sample = |t: f64, p: f64| Sample {
            t,
            readings: vec![
                DeviceReading { power_w: Some(p), throttle_reasons: Some(1), ..DeviceReading::default() },
                DeviceReading { power_w: Some(2.0 * p), throttle_reasons: Some(4), ..DeviceReading::default() },
            ],
        };
        let window = vec![sample(0.0, 10.0), sample(0.5, 20.0), sample(1.2, 30.0), sample(2.0, 40.0)];
        let rows = downsample(&window, &[dev(0), dev(1)]);
        assert_eq!(rows.len(), 6);
        assert_eq!((rows[0].timestamp_s, rows[0].gpu_index, rows[0].power_w), (0.0, 0, Some(15.0)));
        assert_eq!((rows[1].gpu_index, rows[1].power_w, rows[1].throttle_reasons), (1, Some(30.0), Some(4)));
        assert_eq!(rows[0].temperature_c, None, "no reading is null, not 0");
        let bytes = to_parquet(&rows).expect("encodes");
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
    }
}
