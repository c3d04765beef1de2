//! The server's Prometheus endpoint, read the way a scraper does.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The metrics endpoint's address to configure: loopback, the port picked when it is bound
/// (an in-process [`super::TestServer`] reports it as `metrics`; the binary prints it).
pub fn any_loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The body of `GET /metrics` (plain HTTP/1.1); None if the endpoint does not answer 200.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: vecrig\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The value of the sample `series` (its name and labels, exactly as exposed) in `text`.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// `vecrig_lane_connections{lane}` for every lane, in lane order: open connections per
/// request-path lane.
pub async fn lane_connections(addr: SocketAddr) -> Vec<u64> {
    let text = scrape(addr).await.expect("metrics endpoint");
    (0..)
        .map(|lane| format!("vecrig_lane_connections{{lane=\"{lane}\"}}"))
        .take_while(|wanted| text.contains(wanted.as_str()))
        .map(|wanted| series(&text, &wanted).map_or(0, |value| value as u64))
        .collect()
}
