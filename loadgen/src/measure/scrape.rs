//! Reads the server's Prometheus endpoint (`--metrics-url`) into the report: the server's own
//! account of the run (requests by code, shed by reason, queue wait, memory) beside the
//! loadgen's.
//!
//! A scrape is one plain HTTP/1.1 GET of the text exposition; only `vecrig_*` and `process_*`
//! series are kept, without histogram buckets, so the report stays small.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest exposition read, so a wrong URL cannot fill the loadgen's memory.
const MAX_BYTES: u64 = 8 << 20;

/// Scrapes `url` (`http://host:port/path`) and returns its samples by series name.
pub async fn scrape(url: &str) -> Result<BTreeMap<String, f64>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// metrics URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut response = Vec::new();
        stream
            .take(MAX_BYTES)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("{url}: {status}"));
    }
    Ok(parse(body))
}

/// What the counters among `before`'s and `after`'s series counted in between (series named
/// `*_total`, `*_count` or `*_sum`, by the Prometheus naming rules), leaving out those that
/// did not move. A counter that went back (the server restarted) counts from zero.
pub fn counted_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let is_counter = |series: &str| {
        let name = series.split('{').next().unwrap_or(series);
        ["_total", "_count", "_sum"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
    };
    after
        .iter()
        .filter(|(series, _)| is_counter(series))
        .filter_map(|(series, &now)| {
            let then = before.get(series).copied().unwrap_or(0.0);
            let counted = if now >= then { now - then } else { now };
            (counted > 0.0).then(|| (series.clone(), counted))
        })
        .collect()
}

/// The samples of a text exposition, keyed by series (name and labels as exposed).
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with("vecrig_") || line.starts_with("process_"))
        .filter(|line| !line.contains("_bucket{"))
        .filter_map(|line| {
            // A label value may hold spaces; the value follows the last `}` or the name.
            let split = line
                .rfind('}')
                .map_or_else(|| line.find(' '), |i| Some(i + 1))?;
            let (series, value) = line.split_at(split);
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((series.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_between_two_scrapes_are_the_counters_that_moved() {
        let before = parse(
            "vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"} 10\n\
             vecrig_cpu_seconds_total{part=\"serving\"} 1.5\n\
             vecrig_queued_requests 7\n\
             vecrig_service_time_seconds_count{method=\"Search\"} 4\n\
             vecrig_shed_requests_total{reason=\"queue_full\"} 3\n",
        );
        let after = parse(
            "vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"} 25\n\
             vecrig_grpc_requests_total{method=\"Search\",code=\"RESOURCE_EXHAUSTED\"} 5\n\
             vecrig_cpu_seconds_total{part=\"serving\"} 2.0\n\
             vecrig_queued_requests 2\n\
             vecrig_service_time_seconds_count{method=\"Search\"} 4\n\
             vecrig_shed_requests_total{reason=\"queue_full\"} 1\n",
        );
        let counted = counted_between(&before, &after);
        let get = |k: &str| counted.get(k).copied();
        assert_eq!(
            get("vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"}"),
            Some(15.0)
        );
        // A series first seen after counts from zero.
        assert_eq!(
            get("vecrig_grpc_requests_total{method=\"Search\",code=\"RESOURCE_EXHAUSTED\"}"),
            Some(5.0)
        );
        assert_eq!(get("vecrig_cpu_seconds_total{part=\"serving\"}"), Some(0.5));
        // Gauges are not counts; counters that did not move are left out.
        assert_eq!(get("vecrig_queued_requests"), None);
        assert_eq!(
            get("vecrig_service_time_seconds_count{method=\"Search\"}"),
            None
        );
        // Went back: the server restarted, and counted 1 since.
        assert_eq!(
            get("vecrig_shed_requests_total{reason=\"queue_full\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn keeps_our_series_and_drops_buckets_and_comments() {
        let text = "# HELP vecrig_index_points Points\n# TYPE vecrig_index_points gauge\n\
                    vecrig_index_points 300\n\
                    vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"} 12\n\
                    vecrig_service_time_seconds_bucket{le=\"0.001\",method=\"Search\"} 3\n\
                    vecrig_service_time_seconds_sum{method=\"Search\"} 0.5\n\
                    process_resident_memory_bytes 1.5e7\n\
                    go_goroutines 7\n# EOF\n";
        let samples = parse(text);
        assert_eq!(samples.get("vecrig_index_points"), Some(&300.0));
        assert_eq!(
            samples.get("vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"}"),
            Some(&12.0)
        );
        assert_eq!(samples.get("process_resident_memory_bytes"), Some(&1.5e7));
        assert_eq!(samples.len(), 4, "{samples:?}");
    }
}
