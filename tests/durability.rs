//! Durability, at process level: acknowledged writes survive `kill -9`, a second server cannot
//! open the same data directory, and a full disk fails writes with UNAVAILABLE (searches keep
//! working) until space comes back.
//!
//! The crash test drives the real `vecrig-server` binary (which `scripts/test` builds before
//! the tests). `VECRIG_STRESS_PROFILE=full` runs more kill/restart rounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::process::Child;
use tonic::Code;
use vecrig::client::{ConnectOptions, with_deadline};
use vecrig::proto::{self, point};

use crate::common::process;

const DIMS: usize = 8;
const CLIENTS: u64 = 4;

struct Process {
    child: Child,
    target: String,
}

async fn start(data_dir: &Path) -> Process {
    let mut command = process::server_command();
    command
        .args(["--dimensions", &DIMS.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        // Small thresholds, so snapshots and log-segment removal happen during the test.
        .args(["--snapshot-wal-bytes", "1048576"]);
    let (child, addr) = process::spawn(command).await;
    let target = format!("http://{addr}");
    process::wait_serving(&target, Duration::from_secs(60), Duration::from_millis(20)).await;
    Process { child, target }
}

/// What a point should be: present with these values, or absent.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Present(Vec<f32>, String),
    Absent,
}

/// Per id: the last acknowledged state, and a state that was sent but not acknowledged (the
/// request died with the server), which may or may not have been applied.
#[derive(Debug, Default, Clone)]
struct Expected {
    acked: HashMap<u64, State>,
    uncertain: HashMap<u64, State>,
}

fn vector_for(id: u64, version: u64) -> Vec<f32> {
    (0..DIMS)
        .map(|d| 1.0 + ((id * 31 + version * 7 + d as u64) % 97) as f32 / 8.0)
        .collect()
}

/// One client: upserts and deletes in its own id range until the server dies.
async fn client(target: String, id: u64, round: u64, expected: Arc<Mutex<Expected>>) {
    let Ok(mut client) = vecrig::client::connect(&target, &ConnectOptions::default()).await else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(round * 100 + id);
    let base = id * 1_000_000;
    for version in 0u64.. {
        let delete = rng.random_bool(0.25);
        let ids: Vec<u64> = (0..rng.random_range(1..=8))
            .map(|_| base + rng.random_range(0..200))
            .collect();
        let mut planned: Vec<(u64, State)> = Vec::new();
        let result = if delete {
            for &i in &ids {
                planned.push((i, State::Absent));
            }
            expected
                .lock()
                .expect("lock")
                .uncertain
                .extend(planned.iter().cloned());
            client
                .delete(with_deadline(
                    proto::DeleteRequest { ids: ids.clone() },
                    Duration::from_secs(5),
                ))
                .await
                .map(drop)
        } else {
            let points: Vec<proto::Point> = ids
                .iter()
                .map(|&i| {
                    let values = vector_for(i, version);
                    let tag = format!("r{round}v{version}");
                    planned.push((i, State::Present(values.clone(), tag.clone())));
                    proto::Point {
                        id: i,
                        data: Some(point::Data::Vector(proto::Vector { values })),
                        payload: HashMap::from([("tag".to_string(), tag)]),
                    }
                })
                .collect();
            expected
                .lock()
                .expect("lock")
                .uncertain
                .extend(planned.iter().cloned());
            client
                .upsert(with_deadline(
                    proto::UpsertRequest {
                        points,
                        wait: rng.random_bool(0.5),
                    },
                    Duration::from_secs(5),
                ))
                .await
                .map(drop)
        };
        match result {
            Ok(()) => {
                let mut e = expected.lock().expect("lock");
                // Later entries for the same id win, as in the server (a batch applies in order).
                for (i, state) in planned {
                    e.uncertain.remove(&i);
                    e.acked.insert(i, state);
                }
            }
            // The server died: this write stays uncertain, and the client stops.
            Err(_) => return,
        }
    }
}

async fn get(
    client: &mut proto::vector_index_client::VectorIndexClient<tonic::transport::Channel>,
    id: u64,
) -> State {
    match client.get(proto::GetRequest { id }).await {
        Ok(r) => {
            let p = r.into_inner().point.expect("point");
            let Some(point::Data::Vector(v)) = p.data else {
                panic!("get returns the vector")
            };
            State::Present(v.values, p.payload.get("tag").cloned().unwrap_or_default())
        }
        Err(s) if s.code() == Code::NotFound => State::Absent,
        Err(s) => panic!("get {id}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let rounds = if std::env::var("VECRIG_STRESS_PROFILE").as_deref() == Ok("full") {
        20
    } else {
        6
    };
    let data = tempfile::tempdir().expect("tempdir");
    let expected = Arc::new(Mutex::new(Expected::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut acked_total = 0;
    for round in 0..rounds {
        let mut server = start(data.path()).await;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    server.target.clone(),
                    c,
                    round,
                    Arc::clone(&expected),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        server.child.kill().await.expect("kill -9");
        for c in clients {
            c.await.expect("client task");
        }

        // Restart and check every id the clients ever touched.
        let server = start(data.path()).await;
        let mut client = vecrig::client::connect(&server.target, &ConnectOptions::default())
            .await
            .expect("connect");
        let mut e = expected.lock().expect("lock").clone();
        let ids: std::collections::BTreeSet<u64> =
            e.acked.keys().chain(e.uncertain.keys()).copied().collect();
        let mut present = 0u64;
        for id in ids {
            let found = get(&mut client, id).await;
            let acked = e.acked.get(&id).cloned().unwrap_or(State::Absent);
            match e.uncertain.get(&id) {
                None => assert_eq!(
                    found, acked,
                    "round {round}: id {id} lost its acknowledged state"
                ),
                Some(maybe) => assert!(
                    found == acked || found == *maybe,
                    "round {round}: id {id} is {found:?}, neither acknowledged {acked:?} nor in-flight {maybe:?}"
                ),
            }
            if found != State::Absent {
                present += 1;
            }
            // What the server holds now is the truth for the next round.
            e.acked.insert(id, found);
        }
        e.uncertain.clear();
        acked_total = e.acked.len();
        // Nothing appears that was never sent.
        for c in 0..CLIENTS {
            assert_eq!(
                get(&mut client, c * 1_000_000 + 999_999).await,
                State::Absent
            );
        }
        let stats = client
            .stats(proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(stats.points, present, "round {round}: no stray points");
        *expected.lock().expect("lock") = e;
        let mut server = server;
        server.child.kill().await.expect("kill");
    }
    assert!(
        acked_total > 50,
        "the test wrote something: {acked_total} ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_refuses_to_start() {
    let (config, temp) = crate::common::TestServer::config(DIMS);
    let first = crate::common::TestServer::start(config.clone()).await;
    let second = tokio::task::spawn_blocking(move || {
        vecrig_server::storage::Storage::open(&config, Default::default()).map(drop)
    })
    .await
    .expect("task");
    let error = second.expect_err("the directory is locked");
    assert!(
        error
            .to_string()
            .contains("in use by another vecrig-server"),
        "{error}"
    );
    first.stop().await.expect("clean stop");
    drop(temp);
}

/// A small tmpfs of our own, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk completely; returns the filler file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

fn vector_point(id: u64) -> proto::Point {
    proto::Point {
        id,
        data: Some(point::Data::Vector(proto::Vector {
            values: vector_for(id, 0),
        })),
        payload: HashMap::from([("tag".to_string(), format!("p{id}"))]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_unavailable_and_writing_resumes() {
    let Some(disk) = SmallDisk::mount(16 << 20) else {
        crate::common::report_skip(
            "a_full_disk_fails_writes_with_unavailable_and_writing_resumes",
            "mounting a tmpfs needs root with CAP_SYS_ADMIN; this machine refused",
        );
        return;
    };
    let mut config = vecrig_server::config::Config::new(disk.path().join("data"), DIMS);
    config.preload = 0;
    let server = crate::common::TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let upsert = |ids: std::ops::Range<u64>| proto::UpsertRequest {
        points: ids.map(vector_point).collect(),
        wait: true,
    };
    client
        .upsert(upsert(0..10))
        .await
        .expect("upsert with space");

    let filler = disk.fill();
    // Large enough that the append cannot fit in whatever slack the filler left.
    let status = client
        .upsert(upsert(100..400))
        .await
        .expect_err("no space left");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("cannot write to the data directory"),
        "{}",
        status.message()
    );
    // Searches keep working while writes cannot.
    let hits = client
        .search(proto::SearchRequest {
            query: Some(proto::search_request::Query::Vector(proto::Vector {
                values: vector_for(3, 0),
            })),
            k: 3,
            ..Default::default()
        })
        .await
        .expect("search while the disk is full")
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, 3);

    std::fs::remove_file(&filler).expect("free space");
    client
        .upsert(upsert(10..20))
        .await
        .expect("writing resumes");
    drop(client);
    server.stop().await.expect("clean stop with space again");

    // Everything acknowledged is there; the refused batch is not.
    let server = crate::common::TestServer::start(config).await;
    let mut client = server.client().await;
    for id in 0..20 {
        assert_eq!(
            get(&mut client, id).await,
            State::Present(vector_for(id, 0), format!("p{id}")),
            "id {id}"
        );
    }
    assert_eq!(
        get(&mut client, 150).await,
        State::Absent,
        "refused writes stay refused"
    );
    let stats = client
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.points, 20);
    drop(client);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_data_directory_fails_writes_until_it_is_back() {
    let (config, temp) = crate::common::TestServer::config(DIMS);
    let server = crate::common::TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let upsert = |ids: std::ops::Range<u64>| proto::UpsertRequest {
        points: ids.map(vector_point).collect(),
        wait: false,
    };
    client.upsert(upsert(0..10)).await.expect("upsert");

    std::fs::remove_dir_all(&config.data_dir).expect("remove the data directory");
    // A write into a file that no longer has a name would be lost on restart: refused.
    for _ in 0..2 {
        let status = client
            .upsert(upsert(50..60))
            .await
            .expect_err("directory gone");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(
        get(&mut client, 3).await,
        State::Present(vector_for(3, 0), "p3".into())
    );

    std::fs::create_dir_all(&config.data_dir).expect("the directory comes back");
    client
        .upsert(upsert(10..20))
        .await
        .expect("writing resumes");
    drop(client);
    server.stop().await.expect("clean stop");

    // The snapshot taken once writing resumed holds everything acknowledged.
    let server = crate::common::TestServer::start(config).await;
    let mut client = server.client().await;
    for id in 0..20 {
        assert_eq!(
            get(&mut client, id).await,
            State::Present(vector_for(id, 0), format!("p{id}")),
            "id {id}"
        );
    }
    assert_eq!(get(&mut client, 55).await, State::Absent);
    drop(client);
    server.stop().await.expect("clean stop");
    drop(temp);
}
