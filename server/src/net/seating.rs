//! Which request-path lane each party's connections are in ([`super::lanes`] says why): a
//! party keeps the lane of its other open connections, and a new party takes the lane with
//! the fewest. A [`Party`] is a peer address, and where tenants are named, the key of the
//! token its connection's first request carried ([`super::first_request`]). Apart from
//! `lanes` so that the sockets, which hold a [`Seat`], need not know the lanes.
//!
//! One exception: a connection that arrives while its party's requests wait in admission's
//! queue (the party floods, and is refused or kept waiting) is seated in a second lane of the
//! party's, chosen once as the emptiest of the others. Its older connections are the flood;
//! a new one is most likely another client behind the same address (a proxy, a NAT) with
//! no token to tell it apart, and in the flood's lane its requests and answers would queue
//! behind the flood's before admission ever saw them. A flood that keeps opening connections
//! still holds two lanes at most.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Whose connections share a lane: the peer's address, and the key of the token of the
/// connection's first request, if it was looked at and carried one.
pub type Party = (IpAddr, Option<u64>);

/// The seating of all lanes, shared by the accept loop and the seats it hands out.
#[derive(Debug, Clone)]
pub struct Seats(Arc<Mutex<Seating>>);

impl Seats {
    /// Seating for `lanes` lanes, all empty.
    pub fn new(lanes: usize) -> Self {
        Self(Arc::new(Mutex::new(Seating::new(lanes))))
    }

    /// The lane for one more connection of `party`, and the seat that connection holds
    /// until it closes. `flooding` says whether the party's requests wait in admission now;
    /// it is asked only of a party already seated.
    pub fn take(&self, party: Party, flooding: impl FnOnce() -> bool) -> (usize, Seat) {
        let lane = self.seating().seat(party, flooding);
        let seat = Seat {
            party,
            lane,
            seats: self.clone(),
        };
        (lane, seat)
    }

    /// Open connections per lane, in lane order.
    pub fn per_lane(&self) -> Vec<usize> {
        self.seating().per_lane.clone()
    }

    fn seating(&self) -> MutexGuard<'_, Seating> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's seat in one of its party's lanes, given up when the connection closes.
#[derive(Debug)]
pub struct Seat {
    party: Party,
    lane: usize,
    seats: Seats,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seats.seating().leave(self.party, self.lane);
    }
}

/// A party's lanes: `(lane, open connections there)` for its first, and for the second that
/// its connections opened while it flooded are seated in.
#[derive(Debug, Clone, Copy)]
struct Seated {
    home: (usize, usize),
    overflow: Option<(usize, usize)>,
}

/// Which lanes each party's connections are in.
///
/// Bounded by the connection cap: a party is in the table only while it has a connection
/// open.
#[derive(Debug)]
struct Seating {
    parties: HashMap<Party, Seated>,
    /// Open connections per lane.
    per_lane: Vec<usize>,
}

impl Seating {
    fn new(lanes: usize) -> Self {
        Self {
            parties: HashMap::new(),
            per_lane: vec![0; lanes.max(1)],
        }
    }

    /// The lane for one more connection of `party`.
    fn seat(&mut self, party: Party, flooding: impl FnOnce() -> bool) -> usize {
        let per_lane = &self.per_lane;
        let lane = match self.parties.get_mut(&party) {
            None => {
                let lane = emptiest(per_lane, None);
                self.parties.insert(
                    party,
                    Seated {
                        home: (lane, 1),
                        overflow: None,
                    },
                );
                lane
            }
            Some(seated) if per_lane.len() > 1 && flooding() => {
                let home = seated.home.0;
                let overflow = seated
                    .overflow
                    .get_or_insert_with(|| (emptiest(per_lane, Some(home)), 0));
                overflow.1 += 1;
                overflow.0
            }
            Some(seated) => {
                seated.home.1 += 1;
                seated.home.0
            }
        };
        self.per_lane[lane] += 1;
        lane
    }

    /// One connection of `party` in `lane` closed.
    fn leave(&mut self, party: Party, lane: usize) {
        let Some(seated) = self.parties.get_mut(&party) else {
            return;
        };
        match &mut seated.overflow {
            Some((at, open)) if *at == lane && *open > 0 => {
                *open -= 1;
                if *open == 0 {
                    seated.overflow = None;
                }
            }
            _ if seated.home.0 == lane => seated.home.1 = seated.home.1.saturating_sub(1),
            _ => return,
        }
        if seated.home.1 == 0 && seated.overflow.is_none() {
            self.parties.remove(&party);
        }
        self.per_lane[lane] = self.per_lane[lane].saturating_sub(1);
    }
}

/// The lane with the fewest open connections other than `except`; the first of equals, so
/// one party alone is always in lane 0.
fn emptiest(per_lane: &[usize], except: Option<usize>) -> usize {
    (0..per_lane.len())
        .filter(|&lane| Some(lane) != except)
        .min_by_key(|&lane| per_lane[lane])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Party {
        (IpAddr::from([127, 0, 0, last]), None)
    }

    #[test]
    fn tokens_behind_one_address_are_seated_apart() {
        let mut seating = Seating::new(2);
        let (flood, polite) = ((ip(1).0, Some(7)), (ip(1).0, Some(8)));
        for _ in 0..64 {
            assert_eq!(seating.seat(flood, || false), 0);
        }
        assert_eq!(seating.seat(polite, || false), 1);
        assert_eq!(
            seating.seat(ip(1), || false),
            1,
            "no key: a party of its own too"
        );
        assert_eq!(seating.per_lane, vec![64, 2]);
    }

    #[test]
    fn a_client_keeps_its_lane_and_new_clients_take_the_emptiest() {
        let mut seating = Seating::new(2);
        // One client alone is always in lane 0, however many connections it opens.
        for _ in 0..64 {
            assert_eq!(seating.seat(ip(1), || false), 0);
        }
        // The next client gets the empty lane, and so does the one after (63 < 64 is not
        // true of lane 0).
        assert_eq!(seating.seat(ip(2), || false), 1);
        assert_eq!(seating.seat(ip(3), || false), 1);
        assert_eq!(seating.per_lane, vec![64, 2]);
        // Once a client's last connection closes it is forgotten, and seated afresh.
        for _ in 0..64 {
            seating.leave(ip(1), 0);
        }
        assert!(!seating.parties.contains_key(&ip(1)));
        assert_eq!(seating.seat(ip(1), || false), 0);
        assert_eq!(seating.per_lane, vec![1, 2]);
    }

    #[test]
    fn a_connection_opened_while_its_party_floods_is_seated_in_a_second_lane() {
        let mut seating = Seating::new(3);
        for _ in 0..64 {
            assert_eq!(seating.seat(ip(1), || false), 0);
        }
        assert_eq!(seating.seat(ip(2), || false), 1);
        // Its party waits in admission: the emptiest lane but its own, and the next such
        // connection joins it there, however the others fill.
        assert_eq!(seating.seat(ip(1), || true), 2);
        assert_eq!(seating.seat(ip(3), || false), 1);
        assert_eq!(seating.seat(ip(1), || true), 2);
        assert_eq!(
            seating.seat(ip(1), || false),
            0,
            "not flooding: its first lane"
        );
        assert_eq!(seating.per_lane, vec![65, 2, 2]);
        // Once the second lane's connections close, it is chosen afresh.
        seating.leave(ip(1), 2);
        seating.leave(ip(1), 2);
        assert_eq!(seating.per_lane, vec![65, 2, 0]);
        assert_eq!(seating.parties[&ip(1)].overflow.map(|o| o.0), None);
        for _ in 0..65 {
            seating.leave(ip(1), 0);
        }
        assert!(!seating.parties.contains_key(&ip(1)));
        // One lane: nowhere else to go.
        let mut one = Seating::new(1);
        one.seat(ip(1), || false);
        assert_eq!(one.seat(ip(1), || true), 0);
        // Asked only of a party already seated.
        assert_eq!(one.seat(ip(2), || unreachable!("a new party")), 0);
    }

    #[test]
    fn a_seat_is_given_up_when_dropped() {
        let seats = Seats::new(2);
        let (lane, seat) = seats.take(ip(1), || false);
        assert_eq!((lane, seats.per_lane()), (0, vec![1, 0]));
        drop(seat);
        assert_eq!(seats.per_lane(), vec![0, 0]);
    }

    #[test]
    fn a_client_unknown_to_the_table_leaves_nothing() {
        let mut seating = Seating::new(3);
        seating.leave(ip(9), 0);
        assert_eq!(seating.per_lane, vec![0, 0, 0]);
        assert!(seating.parties.is_empty());
    }
}
