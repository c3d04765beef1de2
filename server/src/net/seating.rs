//! Which request-path lane each client's connections are in ([`super::lanes`] says why):
//! a client keeps the lane of its other open connections, and a new client takes the lane with
//! the fewest. Apart from `lanes` so that the sockets, which hold a [`Seat`], need not know
//! the lanes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

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
    pub fn take(&self, client: IpAddr) -> (usize, Seat) {
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
    client: IpAddr,
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
    clients: HashMap<IpAddr, (usize, usize)>,
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
    fn seat(&mut self, client: IpAddr) -> usize {
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
    fn leave(&mut self, client: IpAddr) {
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
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
