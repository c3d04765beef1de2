//! Which request-path lane each party's connections are in ([`super::lanes`] says why): a
//! party keeps the lane of its other open connections, and a new party takes the lane with
//! the fewest. A [`Party`] is a peer address, and where tenants are named, the key of the
//! token its connection's first request carried ([`super::first_request`]). Apart from
//! `lanes` so that the sockets, which hold a [`Seat`], need not know the lanes.

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

    /// The lane for one more connection of `client`, and the seat that connection holds
    /// until it closes.
    pub fn take(&self, client: Party) -> (usize, Seat) {
        let lane = self.seating().seat(client);
        let seat = Seat {
            client,
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

/// A connection's seat in its client's lane, given up when the connection closes.
#[derive(Debug)]
pub struct Seat {
    client: Party,
    seats: Seats,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seats.seating().leave(self.client);
    }
}

/// Which lane each client's connections are in.
///
/// Bounded by the connection cap: a client is in the table only while it has a connection
/// open.
#[derive(Debug)]
struct Seating {
    /// Each client with open connections: its lane, and how many.
    clients: HashMap<Party, (usize, usize)>,
    /// Open connections per lane.
    per_lane: Vec<usize>,
}

impl Seating {
    fn new(lanes: usize) -> Self {
        Self {
            clients: HashMap::new(),
            per_lane: vec![0; lanes.max(1)],
        }
    }

    /// The lane for one more connection of `client`.
    fn seat(&mut self, client: Party) -> usize {
        let per_lane = &self.per_lane;
        let (lane, open) = self.clients.entry(client).or_insert_with(|| {
            // The emptiest lane; the first of equals, so one client is always in lane 0.
            let emptiest = (0..per_lane.len())
                .min_by_key(|&lane| per_lane[lane])
                .unwrap_or(0);
            (emptiest, 0)
        });
        *open += 1;
        let lane = *lane;
        self.per_lane[lane] += 1;
        lane
    }

    /// One connection of `client` closed.
    fn leave(&mut self, client: Party) {
        if let Some((lane, open)) = self.clients.get_mut(&client) {
            let lane = *lane;
            *open -= 1;
            if *open == 0 {
                self.clients.remove(&client);
            }
            self.per_lane[lane] = self.per_lane[lane].saturating_sub(1);
        }
    }
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
            assert_eq!(seating.seat(flood), 0);
        }
        assert_eq!(seating.seat(polite), 1);
        assert_eq!(seating.seat(ip(1)), 1, "no key: a party of its own too");
        assert_eq!(seating.per_lane, vec![64, 2]);
    }

    #[test]
    fn a_client_keeps_its_lane_and_new_clients_take_the_emptiest() {
        let mut seating = Seating::new(2);
        // One client alone is always in lane 0, however many connections it opens.
        for _ in 0..64 {
            assert_eq!(seating.seat(ip(1)), 0);
        }
        // The next client gets the empty lane, and so does the one after (63 < 64 is not
        // true of lane 0).
        assert_eq!(seating.seat(ip(2)), 1);
        assert_eq!(seating.seat(ip(3)), 1);
        assert_eq!(seating.per_lane, vec![64, 2]);
        // Once a client's last connection closes it is forgotten, and seated afresh.
        for _ in 0..64 {
            seating.leave(ip(1));
        }
        assert!(!seating.clients.contains_key(&ip(1)));
        assert_eq!(seating.seat(ip(1)), 0);
        assert_eq!(seating.per_lane, vec![1, 2]);
    }

    #[test]
    fn a_seat_is_given_up_when_dropped() {
        let seats = Seats::new(2);
        let (lane, seat) = seats.take(ip(1));
        assert_eq!((lane, seats.per_lane()), (0, vec![1, 0]));
        drop(seat);
        assert_eq!(seats.per_lane(), vec![0, 0]);
    }

    #[test]
    fn a_client_unknown_to_the_table_leaves_nothing() {
        let mut seating = Seating::new(3);
        seating.leave(ip(9));
        assert_eq!(seating.per_lane, vec![0, 0, 0]);
        assert!(seating.clients.is_empty());
    }
}
