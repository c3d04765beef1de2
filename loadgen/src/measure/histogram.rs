//! Latency histograms: HdrHistograms in microseconds (never growing lists), bounded at an
//! hour, encoded in HdrHistogram's standard form for the report and summarised into
//! percentiles.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use vecrig::validation::report::LatencySummary;

/// Largest latency recorded exactly: one hour, in microseconds. Larger values saturate.
pub(super) const MAX_MICROS: u64 = 3_600_000_000;

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

pub(super) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// A histogram in HdrHistogram's standard form: V2 deflate, base64.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => BASE64.encode(bytes),
        Err(_) => String::new(),
    }
}

/// The inverse of [`encode`], with the loadgen's bounds and precision; an empty string is an
/// empty histogram.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let mut h = histogram();
    if text.is_empty() {
        return Ok(h);
    }
    h.add(&decode_as_recorded(text)?)
        .map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(h)
}

/// The inverse of [`encode`] at the precision the histogram was recorded with (a phase's
/// slices keep 2 significant digits, and a fraction of the memory).
pub fn decode_as_recorded(text: &str) -> Result<Histogram<u64>, String> {
    if text.is_empty() {
        return Histogram::new(2).map_err(|e| format!("histogram: {e:?}"));
    }
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

/// Percentiles of a microsecond histogram, in milliseconds.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}
