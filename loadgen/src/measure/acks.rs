//! Acknowledged writes: the points whose upsert the server answered OK, and reading them back
//! after a fault to prove none was lost.
//!
//! An OK to an upsert is the server's promise that the points are durable (in its fsynced
//! write-ahead log). A fault run writes points tagged with a per-run stamp (payload `ack`),
//! [`Acks`] collects the ids of every acknowledged one as the answers arrive (the scheduler calls
//! [`Acks::record`]), and [`Acks::verify`] reads each back with `Get`: a point that is missing,
//! or holds another run's stamp (an older write survived instead of ours), is lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use vecrig::client::{Metadata, Pool, request_with};
use vecrig::proto::GetRequest;
use vecrig::validation::fault::{AckCheck, MAX_LOST_IDS};

/// The payload key holding the run's stamp (the built-in write template, `ack = "{{stamp}}"`).
pub const STAMP_KEY: &str = "ack";

/// The acknowledged writes of one run. Cheap to clone; clones share the list.
#[derive(Clone)]
pub struct Acks {
    stamp: Arc<str>,
    ids: Arc<Mutex<Vec<u64>>>,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks")
            .field("stamp", &self.stamp)
            .field("acked", &self.len())
            .finish()
    }
}

/// Two handles are equal when they share one list (workloads and requests compare by it).
impl PartialEq for Acks {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }
}

/// What one read-back found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    AsWritten,
    Lost,
    Unverified,
}

impl Acks {
    /// An empty list for writes stamped `stamp` (unique per run and shard).
    pub fn new(stamp: impl Into<Arc<str>>) -> Self {
        Self {
            stamp: stamp.into(),
            ids: Arc::default(),
        }
    }

    /// The stamp written into every point's payload.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// Records the points of an upsert the server answered OK.
    pub fn record(&self, written: &[u64]) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.extend(written.iter().copied());
    }

    /// Points acknowledged so far.
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every acknowledged point back over `pool`, `concurrency` at a time. A `Get` that
    /// fails for want of a server (UNAVAILABLE, RESOURCE_EXHAUSTED, a deadline) is retried a
    /// few times before the point is counted as unverified.
    pub async fn verify(&self, pool: &Pool, metadata: &Metadata, concurrency: usize) -> AckCheck {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ids.sort_unstable();
        ids.dedup();
        let ids: Arc<[u64]> = ids.into();
        let workers = concurrency.clamp(1, 256);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let (ids, pool, stamp) = (Arc::clone(&ids), pool.clone(), Arc::clone(&self.stamp));
            let metadata = metadata.clone();
            tasks.spawn(async move {
                let mut found = Vec::new();
                for &id in ids.iter().skip(worker).step_by(workers) {
                    found.push((id, read_back(&pool, &metadata, id, &stamp).await));
                }
                found
            });
        }
        let mut check = AckCheck {
            acked: ids.len() as u64,
            ..AckCheck::default()
        };
        while let Some(joined) = tasks.join_next().await {
            // A task that died verified nothing: its points stay unverified (counted below).
            let Ok(found) = joined else { continue };
            for (id, f) in found {
                match f {
                    Found::AsWritten => check.verified += 1,
                    Found::Lost => {
                        check.lost += 1;
                        if check.lost_ids.len() < MAX_LOST_IDS {
                            check.lost_ids.push(id);
                        }
                    }
                    Found::Unverified => {}
                }
            }
        }
        check.lost_ids.sort_unstable();
        check.unverified = check.acked - check.verified - check.lost;
        check
    }
}

async fn read_back(pool: &Pool, metadata: &Metadata, id: u64, stamp: &str) -> Found {
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        let answer = pool
            .client()
            .get(request_with(
                GetRequest { id },
                Duration::from_secs(5),
                metadata,
            ))
            .await;
        match answer {
            Ok(response) => {
                let point = response.into_inner().point;
                let stamped = point
                    .as_ref()
                    .and_then(|p| p.payload.get(STAMP_KEY))
                    .is_some_and(|s| s == stamp);
                return if stamped {
                    Found::AsWritten
                } else {
                    Found::Lost
                };
            }
            Err(status) if status.code() == Code::NotFound => return Found::Lost,
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::ResourceExhausted
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                ) && attempt < ATTEMPTS =>
            {
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            Err(_) => return Found::Unverified,
        }
    }
    Found::Unverified
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_ids_and_compares_by_list() {
        let acks = Acks::new("run-1");
        acks.clone().record(&[5, 6, 7]);
        assert_eq!(acks.len(), 3);
        assert_eq!(acks.stamp(), "run-1");
        assert_eq!(acks, acks.clone());
        assert_ne!(acks, Acks::new("run-1"));
    }
}
