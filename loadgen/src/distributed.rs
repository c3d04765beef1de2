//! Distributed runs where the loadgens are replicas that cannot be told their shard index:
//! `docker compose up --scale loadgen=N` starts N identical containers.
//!
//! Each replica finds its index itself ([`shard_from_peers`]): the replicas' service name
//! resolves (Docker's embedded DNS) to the addresses of all N of them; every replica sorts the
//! same list and takes its own address's position. No shared state, nothing left behind, and
//! it works with Compose v1 and v2 alike (their container names differ, their DNS does not).
//!
//! Output paths may hold `{shard}` so the replicas, writing to one mounted folder, do not
//! overwrite each other; `merge` takes that folder and checks that every shard is there.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vecrig::validation::report::Report;

/// Why the shard index could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// The name never resolved to the expected number of addresses including ours.
    #[error(
        "--shard-peers {name}/{count}: after {waited:?}, {name} resolves to {seen:?} and this loadgen is {own:?}; expected {count} addresses including this one (is --scale the same as the count?)"
    )]
    NotFound {
        /// The peers' name.
        name: String,
        /// The expected number of replicas.
        count: u64,
        /// What the name resolved to last.
        seen: Vec<IpAddr>,
        /// Our own address, as far as it could be found.
        own: Option<IpAddr>,
        /// How long we waited.
        waited: Duration,
    },
}

/// The flags that say which shard of a distributed run this loadgen sends; flattened into
/// the CLI, which knows nothing else of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Send only this shard's part of the load, as I/N (0-based): N loadgens with the same
    /// flags and I = 0..N-1 together send the whole; `merge` combines their reports.
    #[arg(long, env = "VECRIG_SHARD", value_parser = parse_shard, global = true)]
    pub shard: Option<(u64, u64)>,
    /// Find this loadgen's shard among N replicas of NAME, as NAME/N (`loadgen/4` with
    /// `docker compose up --scale loadgen=4`): NAME resolves to the N replicas' addresses,
    /// sorted, and this one's position is its index. `{shard}` in --out, --html and --hdr-log
    /// becomes the index.
    #[arg(long, env = "VECRIG_SHARD_PEERS", value_parser = parse_peers, global = true, conflicts_with = "shard")]
    pub shard_peers: Option<(String, u64)>,
}

/// Parses `I/N` (`--shard 0/4`).
pub fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let (index, count) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected I/N, e.g. 0/4"))?;
    let index: u64 = index
        .trim()
        .parse()
        .map_err(|e| format!("shard index: {e}"))?;
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|e| format!("shard count: {e}"))?;
    if count == 0 || index >= count {
        return Err(format!("{text:?}: need 0 <= I < N"));
    }
    Ok((index, count))
}

/// Parses `NAME/N` (`--shard-peers loadgen/4`).
pub fn parse_peers(text: &str) -> Result<(String, u64), String> {
    let (name, count) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("{text:?}: expected NAME/N, e.g. loadgen/4"))?;
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|e| format!("{text:?}: count: {e}"))?;
    if name.trim().is_empty() || count == 0 {
        return Err(format!("{text:?}: need a name and N >= 1"));
    }
    Ok((name.trim().to_string(), count))
}

/// This replica's index among `peers`: its position in the sorted, de-duplicated list.
pub fn index_among(own: IpAddr, peers: &[IpAddr]) -> Option<u64> {
    let mut sorted = peers.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.iter().position(|p| *p == own).map(|i| i as u64)
}

/// The local address this host uses to reach `peer` (no packet is sent: a UDP "connect" only
/// picks the route).
fn own_address(peer: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect((peer, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Waits (up to `wait`) until `name` resolves to `count` addresses, one of them ours, and
/// returns `(index, count)`. With `count == 1` there is nothing to find out.
pub async fn shard_from_peers(
    name: &str,
    count: u64,
    wait: Duration,
) -> Result<(u64, u64), PeersError> {
    if count == 1 {
        return Ok((0, 1));
    }
    let started = Instant::now();
    loop {
        let seen: Vec<IpAddr> = match tokio::net::lookup_host((name, 0)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            Err(_) => Vec::new(),
        };
        let own = seen.first().and_then(|p| own_address(*p));
        let mut distinct = seen.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() as u64 == count
            && let Some(index) = own.and_then(|own| index_among(own, &distinct))
        {
            return Ok((index, count));
        }
        // Fewer: the other replicas are still starting. More: a mistake that waiting will not
        // fix, but a replica of an earlier run may still be going away, so wait all the same.
        if started.elapsed() >= wait {
            return Err(PeersError::NotFound {
                name: name.to_string(),
                count,
                seen: distinct,
                own,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `path` with `{shard}` replaced by this loadgen's shard index (0 when not sharded).
pub fn shard_path(path: &Path, shard: Option<(u64, u64)>) -> PathBuf {
    let index = shard.map_or(0, |(i, _)| i).to_string();
    PathBuf::from(path.to_string_lossy().replace("{shard}", &index))
}

/// The reports a `merge` reads: files as given, and for a folder, its `shard-*.json` files.
pub fn report_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries =
            std::fs::read_dir(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".json"))
            })
            .collect();
        if found.is_empty() {
            return Err(format!("{} holds no shard-*.json report", path.display()));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Checks that sharded reports are one whole run: the same N everywhere, each index 0..N
/// once. Reports without shards (or mixed with some) are left to `merge` itself.
pub fn check_complete(reports: &[Report]) -> Result<(), String> {
    let shards: Vec<Option<&str>> = reports
        .iter()
        .map(|r| {
            r.scenarios
                .first()
                .and_then(|s| s.parameters.get("shard"))
                .map(String::as_str)
        })
        .collect();
    check_shards(&shards)
}

/// [`check_complete`] on the reports' `shard` parameters (`I/N`).
fn check_shards(parameters: &[Option<&str>]) -> Result<(), String> {
    let shards: Vec<(u64, u64)> = parameters
        .iter()
        .flatten()
        .filter_map(|s| {
            let (i, n) = s.split_once('/')?;
            Some((i.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    if shards.is_empty() || shards.len() != parameters.len() {
        return Ok(());
    }
    let count = shards[0].1;
    let mut indices: Vec<u64> = shards.iter().map(|s| s.0).collect();
    indices.sort_unstable();
    let expected: Vec<u64> = (0..count).collect();
    if shards.iter().any(|s| s.1 != count) || indices != expected {
        return Err(format!(
            "the reports are not the shards of one run: expected shards 0..{count} of {count} once each, got {:?}",
            shards
                .iter()
                .map(|(i, n)| format!("{i}/{n}"))
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

/// Before a run: finds the shard index when `--shard-peers` is given (waiting up to `wait`
/// for the replicas), puts it into `{shard}` of the output paths, and creates their folders,
/// so a replica writing into a fresh mounted folder does not fail at the end.
pub async fn prepare(
    args: &mut Args,
    wait: Duration,
    outputs: [&mut Option<PathBuf>; 3],
) -> Result<(), String> {
    if let Some((name, count)) = args.shard_peers.clone() {
        let shard = shard_from_peers(&name, count, wait)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("shard {}/{} of {name}", shard.0, shard.1);
        args.shard = Some(shard);
    }
    let shard = args.shard;
    for path in outputs.into_iter().flatten() {
        *path = shard_path(path, shard);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_index() {
        assert_eq!(parse_peers("loadgen/4"), Ok(("loadgen".into(), 4)));
        for bad in ["loadgen", "/4", "loadgen/0", "loadgen/x"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let peers = [ip("172.18.0.5"), ip("172.18.0.3"), ip("172.18.0.10")];
        assert_eq!(index_among(ip("172.18.0.3"), &peers), Some(0));
        assert_eq!(index_among(ip("172.18.0.5"), &peers), Some(1));
        assert_eq!(
            index_among(ip("172.18.0.10"), &peers),
            Some(2),
            "sorted as addresses"
        );
        assert_eq!(index_among(ip("172.18.0.4"), &peers), None);
    }

    #[tokio::test]
    async fn localhost_is_one_replica_of_itself() {
        // 127.0.0.1 is the only address of "localhost" here (v4), and our own route to it.
        assert_eq!(
            shard_from_peers("anything", 1, Duration::ZERO).await.ok(),
            Some((0, 1))
        );
        let error = shard_from_peers("localhost", 3, Duration::ZERO)
            .await
            .expect_err("one address, three expected");
        assert!(error.to_string().contains("expected 3"), "{error}");
    }

    #[test]
    fn shards_of_one_run_are_complete() {
        assert!(check_shards(&[Some("1/2"), Some("0/2")]).is_ok());
        assert!(
            check_shards(&[None, None]).is_ok(),
            "not sharded: merge decides"
        );
        assert!(
            check_shards(&[Some("0/1"), None]).is_ok(),
            "mixed: merge decides"
        );
        let missing = check_shards(&[Some("0/3"), Some("2/3")]).expect_err("1/3 missing");
        assert!(missing.contains("0/3"), "{missing}");
        assert!(
            check_shards(&[Some("0/2"), Some("0/2")]).is_err(),
            "a shard twice"
        );
        assert!(
            check_shards(&[Some("0/2"), Some("1/3")]).is_err(),
            "two runs"
        );
    }

    #[test]
    fn shard_paths_and_report_folders() {
        let p = shard_path(Path::new("/r/run/shard-{shard}.json"), Some((2, 4)));
        assert_eq!(p, PathBuf::from("/r/run/shard-2.json"));
        assert_eq!(
            shard_path(Path::new("a-{shard}"), None),
            PathBuf::from("a-0")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "shard-1.json",
            "shard-0.json",
            "merged.json",
            "shard-0.html",
        ] {
            std::fs::write(dir.path().join(name), "{}").expect("write");
        }
        let files = report_files(&[dir.path().to_path_buf()]).expect("files");
        let names: Vec<_> = files
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(names, ["shard-0.json", "shard-1.json"]);
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(report_files(&[empty.path().to_path_buf()]).is_err());
    }
}
