//! Pacing's unit tests: budgets, allowances, pauses, room wake-ups and the answer price.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::{Pacer, ROOM_TICK};
use super::charge::Charge;
use super::connection::{Connection, PACED_FOR};
use super::price::{FIRST_PRICE, PRICE_EVERY};
use super::read_gate::{PACED_READ_BYTES, ROOM_READ_BYTES, ReadGate, SHED_READ_BYTES};
use super::settings::Config;
use crate::cpu::CpuSplit;

fn pacer(connection_rate: f64, excess_rate: f64) -> Arc<Pacer> {
    Pacer::new(Config {
        connection_rate,
        excess_rate,
        shed_per_served: 0.0,
        excess_cpu: 0.0,
        max_pause: Duration::from_secs(2),
    })
}

fn noop_waker() -> Waker {
    Waker::noop().clone()
}

#[tokio::test(start_paused = true)]
async fn a_connection_within_its_allowance_is_never_paced() {
    let pacer = pacer(10.0, 1.0);
    let polite = pacer.connection();
    for _ in 0..30 {
        polite.charge(Charge::Cheap);
        assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
        tokio::time::advance(Duration::from_millis(200)).await;
    }
    assert_eq!(pacer.stats().pauses, 0);
}

#[tokio::test(start_paused = true)]
async fn the_excess_budget_is_shared_and_then_pauses_whoever_draws_on_it() {
    // 100 excess answers a second, one second of burst.
    let pacer = pacer(1.0, 100.0);
    let flooder = pacer.connection();
    for _ in 0..101 {
        flooder.charge(Charge::Shed);
    }
    // Allowance (a few) plus the burst (100) were answered without pause...
    assert!(matches!(
        flooder.gate(&noop_waker()),
        ReadGate::Open | ReadGate::Limited(_)
    ));
    for _ in 0..50 {
        flooder.charge(Charge::Shed);
    }
    // ...the next 50 put it half a second into the future.
    let ReadGate::PausedUntil(until) = flooder.gate(&noop_waker()) else {
        panic!("paused");
    };
    let pause = until - Instant::now();
    assert!(
        pause > Duration::from_millis(400) && pause < Duration::from_millis(600),
        "{pause:?}"
    );
    // A polite connection is not held by the flooder's debt.
    let polite = pacer.connection();
    polite.charge(Charge::Cheap);
    assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
    // After the pause it reads again, a little at a time.
    tokio::time::advance(pause + Duration::from_millis(1)).await;
    assert_eq!(
        flooder.gate(&noop_waker()),
        ReadGate::Limited(SHED_READ_BYTES)
    );
    // And once it stops asking, fully.
    tokio::time::advance(PACED_FOR).await;
    assert_eq!(flooder.gate(&noop_waker()), ReadGate::Open);
}

#[tokio::test(start_paused = true)]
async fn a_paced_connection_draws_on_the_budget_not_on_its_allowance() {
    // 50 free answers a second per connection, 10 a second shared.
    let pacer = pacer(50.0, 10.0);
    let flooder = pacer.connection();
    // Its first few, the budget's burst (10), then 16 more: paused about 1.6 s.
    for _ in 0..30 {
        flooder.charge(Charge::Shed);
    }
    assert!(matches!(
        flooder.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    // After the pause, and still paced: its allowance would have refilled to 50, but a
    // paced connection draws on the shared budget, which is spent again at once.
    tokio::time::advance(Duration::from_millis(1_700)).await;
    assert_eq!(
        flooder.gate(&noop_waker()),
        ReadGate::Limited(SHED_READ_BYTES)
    );
    for _ in 0..3 {
        flooder.charge(Charge::Shed);
    }
    assert!(matches!(
        flooder.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    // A connection that is not paced keeps its allowance meanwhile.
    let polite = pacer.connection();
    for _ in 0..3 {
        polite.charge(Charge::Cheap);
    }
    assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
}

#[tokio::test(start_paused = true)]
async fn a_paced_flood_of_refused_searches_is_read_in_larger_pieces_than_other_calls() {
    // 50 free answers a second per connection, 10 a second shared.
    let pacer = pacer(50.0, 10.0);
    let searches = pacer.connection();
    let probes = pacer.connection();
    for _ in 0..70 {
        searches.charge(Charge::Shed);
        probes.charge(Charge::Cheap);
    }
    // Both paused on the spent budgets; after the longest pause (2 s), both still paced.
    tokio::time::advance(Duration::from_millis(2_100)).await;
    // Refused searches are large and their cost is per wake-up: several per read.
    assert_eq!(
        searches.gate(&noop_waker()),
        ReadGate::Limited(SHED_READ_BYTES)
    );
    // Health checks and the like are tiny: a few per read, or the pause's floor would
    // let a flood of them through.
    assert_eq!(
        probes.gate(&noop_waker()),
        ReadGate::Limited(PACED_READ_BYTES)
    );
}

#[tokio::test(start_paused = true)]
async fn pauses_are_bounded_and_room_lifts_them() {
    let pacer = pacer(1.0, 10.0);
    let flooder = pacer.connection();
    for _ in 0..1_000 {
        flooder.charge(Charge::Shed);
    }
    let ReadGate::PausedUntil(until) = flooder.gate(&noop_waker()) else {
        panic!("paused");
    };
    assert!(until - Instant::now() <= Duration::from_secs(2));
    assert_eq!(pacer.stats().paused, 1);
    // A connection paused for cheap calls is not woken: room does not help it.
    let prober = pacer.connection();
    for _ in 0..20 {
        prober.charge(Charge::Cheap);
    }
    assert!(matches!(
        prober.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    pacer.room();
    assert_eq!(
        flooder.gate(&noop_waker()),
        ReadGate::Limited(ROOM_READ_BYTES)
    );
    assert_eq!(pacer.stats().woken_for_room, 1);
    assert!(matches!(
        prober.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    // One at a time: the next wake waits for the woken connection to have read (above).
    let second = pacer.connection();
    for _ in 0..5 {
        second.charge(Charge::Shed);
    }
    pacer.room();
    assert_eq!(
        second.gate(&noop_waker()),
        ReadGate::Limited(ROOM_READ_BYTES)
    );
}

#[tokio::test(start_paused = true)]
async fn served_requests_pay_off_the_budget_for_several_refusals_each() {
    // 10 excess answers a second (a burst of 10), and 4 more per served request.
    let pacer = Pacer::new(Config {
        connection_rate: 1.0,
        excess_rate: 10.0,
        shed_per_served: 4.0,
        excess_cpu: 0.0,
        max_pause: Duration::from_secs(2),
    });
    let overloaded = pacer.connection();
    // Each second: 5 served, 20 refused. The served earn 20, so it is never paused,
    // however long it goes on.
    for _ in 0..10 {
        for _ in 0..5 {
            overloaded.served();
            for _ in 0..4 {
                overloaded.charge(Charge::Shed);
            }
        }
        assert!(matches!(overloaded.gate(&noop_waker()), ReadGate::Open));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pacer.stats().pauses, 0);
    // Credit is not saved up: served requests in a quiet spell buy no flood later.
    for _ in 0..1_000 {
        overloaded.served();
    }
    for _ in 0..40 {
        overloaded.charge(Charge::Shed);
    }
    assert!(matches!(
        overloaded.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn served_requests_do_not_pay_for_other_cheap_answers() {
    // The same budget as above; one client is served, another floods health checks.
    let pacer = Pacer::new(Config {
        connection_rate: 1.0,
        excess_rate: 10.0,
        shed_per_served: 4.0,
        excess_cpu: 0.0,
        max_pause: Duration::from_secs(2),
    });
    let served = pacer.connection();
    let prober = pacer.connection();
    // Each second: 5 served on one connection, 20 health checks on the other. The 20
    // credits are for refusals of work only: the checks have the 10 a second (and the
    // burst) to themselves, so within two seconds the prober is paused.
    for _ in 0..2 {
        for _ in 0..5 {
            served.served();
            for _ in 0..4 {
                prober.charge(Charge::Cheap);
            }
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(matches!(
        prober.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    // The credits still pay for refusals of work.
    let shed = pacer.connection();
    for _ in 0..5 {
        served.served();
        for _ in 0..4 {
            shed.charge(Charge::Shed);
        }
    }
    assert!(matches!(shed.gate(&noop_waker()), ReadGate::Open));
}

#[tokio::test(start_paused = true)]
async fn excess_answers_cost_no_more_cpu_than_the_ceiling_whatever_the_rates_allow() {
    // The rates allow a million excess answers a second, but at 1 ms of CPU per answer
    // and a ceiling of a tenth of a CPU, 100 a second is all the CPU allows (after one
    // second's burst).
    let pacer = Pacer::new(Config {
        connection_rate: 1.0,
        excess_rate: 1e6,
        shed_per_served: 0.0,
        excess_cpu: 0.1,
        max_pause: Duration::from_secs(2),
    });
    pacer.fix_price(Duration::from_millis(1));
    let overloaded = pacer.connection();
    // The burst: 100 answers, a few from its own allowance.
    for _ in 0..100 {
        overloaded.charge(Charge::Shed);
    }
    assert!(matches!(overloaded.gate(&noop_waker()), ReadGate::Open));
    // 50 more: half a second of the ceiling's refill.
    for _ in 0..50 {
        overloaded.charge(Charge::Shed);
    }
    let ReadGate::PausedUntil(until) = overloaded.gate(&noop_waker()) else {
        panic!("paused by the CPU ceiling");
    };
    let pause = until - Instant::now();
    assert!(
        pause > Duration::from_millis(400) && pause < Duration::from_millis(600),
        "{pause:?}"
    );
    assert_eq!(pacer.stats().answer_cpu, Duration::from_millis(1));
    // The ceiling is shared by every kind of cheap answer: health checks find it spent.
    let prober = pacer.connection();
    for _ in 0..5 {
        prober.charge(Charge::Cheap);
    }
    assert!(matches!(
        prober.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
}

#[tokio::test]
async fn the_answer_price_is_the_request_path_cpu_per_answer() {
    let pacer = Pacer::new(Config {
        connection_rate: 0.0,
        excess_rate: 1e9,
        shed_per_served: 0.0,
        excess_cpu: 1.0,
        max_pause: Duration::from_secs(2),
    });
    let flooder = pacer.connection();
    // Answers that each burn 200 us of this (serving) thread's CPU, for long enough to
    // be re-priced a few times.
    let started = Instant::now();
    while started.elapsed() < 4 * PRICE_EVERY {
        let spin = crate::cpu::tests_support::spin;
        spin(Duration::from_micros(200));
        flooder.charge(Charge::Shed);
    }
    let price = pacer.stats().answer_cpu;
    // Other tests run beside this one and add to the process's serving CPU: a lower bound
    // and a loose upper one.
    assert!(
        price >= Duration::from_micros(120) && price < Duration::from_millis(5),
        "{price:?}"
    );
}

/// Serving and index CPU spent on paper, for [`Pacer::fake_cpu`].
static PAPER_SERVING_NS: AtomicU64 = AtomicU64::new(0);
static PAPER_INDEX_NS: AtomicU64 = AtomicU64::new(0);

fn spend_on_paper(micros: u64) {
    PAPER_SERVING_NS.fetch_add(micros * 1_000, Ordering::Relaxed);
}

fn paper_cpu() -> CpuSplit {
    let seconds = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
    CpuSplit {
        index_s: seconds(&PAPER_INDEX_NS),
        serving_s: seconds(&PAPER_SERVING_NS),
    }
}

/// Index CPU of each search served on paper: 100 of them fill most of a pricing window.
const PAPER_SEARCH_US: u64 = 2_000;

/// One pricing window on `connection`: `served` requests at `served_us` of request path
/// each, and `refused` refusals at `refused_us` each. (The order within a window does not
/// move the price: a window is priced by its totals.)
async fn paper_window(
    connection: &Arc<Connection>,
    (served, served_us): (u64, u64),
    (refused, refused_us): (u64, u64),
) {
    for _ in 0..served {
        spend_on_paper(served_us);
        PAPER_INDEX_NS.fetch_add(PAPER_SEARCH_US * 1_000, Ordering::Relaxed);
        connection.served();
    }
    for _ in 0..refused {
        spend_on_paper(refused_us);
        connection.charge(Charge::Shed);
    }
    tokio::time::sleep(PRICE_EVERY).await;
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_priced_at_its_own_cost_not_at_a_served_requests() {
    let pacer = Pacer::new(Config {
        connection_rate: 0.0,
        excess_rate: 1e9,
        shed_per_served: 3.0,
        excess_cpu: 1.0,
        max_pause: Duration::from_secs(2),
    });
    pacer.fake_cpu(paper_cpu);
    let connection = pacer.connection();
    // Start-up: seconds of CPU (a preload) while clients are told UNAVAILABLE. No answer
    // costs that much, so the window prices nothing.
    connection.served();
    spend_on_paper(5_000_000);
    for _ in 0..40 {
        connection.charge(Charge::Cheap);
    }
    tokio::time::sleep(PRICE_EVERY).await;
    connection.served();
    assert_eq!(pacer.stats().answer_cpu, FIRST_PRICE);
    assert_eq!(pacer.stats().cheap_cpu_total, Duration::ZERO);
    // At capacity: served requests whose request path costs 130 us each, nothing refused.
    for _ in 0..8 {
        paper_window(&connection, (100, 130), (0, 0)).await;
    }
    assert_eq!(pacer.stats().served_cpu, Duration::from_micros(130));
    // A light load: 40 searches in a window, the server busy for a third of it. Their
    // share of what the process spends whatever it serves (timers, wake-ups) makes each
    // look like 330 us of request path; not learned, or a flood after it would find its
    // refusals' share of the serving CPU below nothing.
    // (A window is closed by the first answer after it, whose CPU it counts: the last
    // window at capacity by the first light one, at 330 us, hence about 130 us.)
    paper_window(&connection, (40, 330), (0, 0)).await;
    connection.served();
    let served = pacer.stats().served_cpu.as_secs_f64() * 1e6;
    assert!((129.0..133.0).contains(&served), "{served} us");
    // A flood: each served request comes with four refusals at 30 us each. Priced as a
    // blend of all answers, a refusal would be (130 + 4 x 30) / 5 = 50 us.
    for _ in 0..8 {
        paper_window(&connection, (100, 130), (400, 30)).await;
    }
    let stats = pacer.stats();
    let price = stats.answer_cpu.as_secs_f64() * 1e6;
    assert!((29.0..32.0).contains(&price), "{price} us");
    // And the CPU spent refusing is counted at that price: about 3,200 x 30 us.
    let spent = stats.cheap_cpu_total.as_secs_f64();
    assert!((0.080..0.100).contains(&spent), "{spent} s");
    // The served path grows dearer under load (250 us) than it was at capacity: what is
    // left over the old estimate (330 us a refusal) is not believed beyond the blend of
    // all answers, (100 x 250 + 40 x 30) / 140 = 187 us.
    for _ in 0..8 {
        paper_window(&connection, (100, 250), (40, 30)).await;
    }
    let price = pacer.stats().answer_cpu.as_secs_f64() * 1e6;
    assert!((180.0..188.0).contains(&price), "{price} us");
}

#[tokio::test(start_paused = true)]
async fn paused_work_is_woken_while_admission_has_room_even_if_nothing_finishes() {
    let pacer = pacer(1.0, 10.0);
    let has_room = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tender = tokio::spawn(Arc::clone(&pacer).tend_room({
        let has_room = Arc::clone(&has_room);
        move || has_room.load(Ordering::Relaxed)
    }));
    let first = pacer.connection();
    let second = pacer.connection();
    for flooder in [&first, &second] {
        for _ in 0..100 {
            flooder.charge(Charge::Shed);
        }
    }
    // No room: both stay paused.
    tokio::time::sleep(10 * ROOM_TICK).await;
    assert!(matches!(
        first.gate(&noop_waker()),
        ReadGate::PausedUntil(_)
    ));
    // Room, and no request finishes to say so: the tender wakes the first...
    has_room.store(true, Ordering::Relaxed);
    tokio::time::sleep(2 * ROOM_TICK).await;
    assert_eq!(
        first.gate(&noop_waker()),
        ReadGate::Limited(ROOM_READ_BYTES)
    );
    // ...and, as the room lasts, the next.
    tokio::time::sleep(2 * ROOM_TICK).await;
    assert_eq!(
        second.gate(&noop_waker()),
        ReadGate::Limited(ROOM_READ_BYTES)
    );
    tender.abort();
}

#[tokio::test(start_paused = true)]
async fn zero_excess_rate_turns_pacing_off() {
    let pacer = pacer(1.0, 0.0);
    let flooder = pacer.connection();
    for _ in 0..10_000 {
        flooder.charge(Charge::Shed);
    }
    assert_eq!(flooder.gate(&noop_waker()), ReadGate::Open);
}
