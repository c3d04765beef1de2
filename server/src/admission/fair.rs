//! A queue that is fair across clients, then across each client's connections: start-time
//! fair queueing by cost between clients; between a client's connections, every other turn
//! to its lightest connection and the rest round robin.
//!
//! Each client with requests waiting has a virtual start tag, `max(V, F)`, where `F` is its
//! finish tag (moved on by each of its dispatched requests' cost divided by its weight) and
//! `V` the start tag of the client served last. The client with the smallest tag sends next,
//! and it sends the oldest request of one of its connections. So each client with work
//! waiting gets a share of capacity in proportion to its weight, however many connections it
//! opened; a client alone uses everything (the queue is work-conserving), and a client that
//! was idle banks no credit.
//!
//! Which connection: one client is often many parties behind one address or token (a pool,
//! a proxy's connections, a flood beside a polite caller). Round robin alone would make a
//! connection with one request wait a turn of every other connection, 64 turns behind a
//! 64-connection flood. So the client's turns alternate: one goes to the connection with the
//! fewest requests waiting (the one that joined last among equals: a caller with one request
//! at a time joins anew with each), the next to the connection next in round robin. A light
//! connection waits at most two dispatches of its client, and a heavy one still gets at
//! least one in every `2n` of them with `n` connections waiting.
//!
//! It also knows how many places each client, and each of its connections, holds, so that
//! when the queue is full the place given up is the newest request of the client holding the
//! most ([`FairQueue::heaviest`], [`FairQueue::newest_of`]), never a light client's; and
//! inside one client, that of its connection holding the most
//! ([`FairQueue::connections_of`], [`FairQueue::newest_of_connection`]).
//!
//! State is kept only for clients with requests waiting: the table is bounded by the queue,
//! however many addresses a scan comes from.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::caller::{Caller, ClientKey};

/// Fixed-point scale of tags: costs are small integers, divided by weights.
const SCALE: u64 = 1 << 16;

/// Requests waiting, in fair order.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Clients with requests waiting, by (start tag, arrival of the client): who sends next.
    order: BTreeMap<(u64, u64), ClientKey>,
    clients: HashMap<ClientKey, Client<T>>,
    /// Each waiting id's client and connection.
    located: HashMap<u64, (ClientKey, u64)>,
    /// The start tag of the client served last.
    virtual_time: u64,
    /// Numbers clients as they come, to break ties between equal tags by arrival.
    next_seq: u64,
    /// Numbers connections as they join their client's turns (from nothing waiting).
    next_join: u64,
    len: usize,
}

#[derive(Debug)]
struct Client<T> {
    /// Its key in `order`.
    tag: (u64, u64),
    /// Moved on by each dispatched request's cost over the weight.
    finish: u64,
    weight: u64,
    /// Its connections with requests waiting, in round-robin order.
    turns: VecDeque<Turn<T>>,
    /// Whether its next dispatch goes to its lightest connection (else round robin).
    light_next: bool,
    /// Its waiting ids, oldest first.
    waiting: BTreeSet<u64>,
}

/// One connection's requests waiting, oldest first.
#[derive(Debug)]
struct Turn<T> {
    connection: u64,
    /// When it joined the turns: the latest joiner wins a tie for the lightest.
    joined: u64,
    queue: VecDeque<Waiting<T>>,
}

impl<T> Client<T> {
    /// The index in `turns` of the connection that sends next.
    fn next_turn(&self) -> usize {
        if !self.light_next {
            return 0;
        }
        self.turns
            .iter()
            .enumerate()
            .min_by_key(|(_, turn)| (turn.queue.len(), std::cmp::Reverse(turn.joined)))
            .map_or(0, |(at, _)| at)
    }

    fn turn_of(&self, connection: u64) -> Option<usize> {
        self.turns
            .iter()
            .position(|turn| turn.connection == connection)
    }
}

#[derive(Debug)]
struct Waiting<T> {
    id: u64,
    units: u32,
    item: T,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            order: BTreeMap::new(),
            clients: HashMap::new(),
            located: HashMap::new(),
            virtual_time: 0,
            next_seq: 0,
            next_join: 0,
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues request `id` (ids must grow with arrival) of `caller`, costing `units`.
    pub fn push(&mut self, id: u64, caller: &Caller, units: u32, item: T) {
        let client = match self.clients.get_mut(&caller.client) {
            Some(client) => client,
            None => {
                let tag = (self.virtual_time, self.next_seq);
                self.next_seq += 1;
                self.order.insert(tag, caller.client.clone());
                self.clients.entry(caller.client.clone()).or_insert(Client {
                    tag,
                    finish: self.virtual_time,
                    weight: u64::from(caller.weight.max(1)),
                    turns: VecDeque::new(),
                    light_next: true,
                    waiting: BTreeSet::new(),
                })
            }
        };
        let waiting = Waiting { id, units, item };
        match client.turn_of(caller.connection) {
            Some(at) => client.turns[at].queue.push_back(waiting),
            None => {
                client.turns.push_back(Turn {
                    connection: caller.connection,
                    joined: self.next_join,
                    queue: VecDeque::from([waiting]),
                });
                self.next_join += 1;
            }
        }
        client.waiting.insert(id);
        self.located
            .insert(id, (caller.client.clone(), caller.connection));
        self.len += 1;
    }

    /// The id and cost of the request to dispatch next.
    pub fn front(&self) -> Option<(u64, u32)> {
        let (_, key) = self.order.first_key_value()?;
        let client = self.clients.get(key)?;
        let turn = client.turns.get(client.next_turn())?;
        turn.queue.front().map(|w| (w.id, w.units))
    }

    /// Takes the request to dispatch next.
    pub fn pop_front(&mut self) -> Option<(u64, u32, T)> {
        let (&tag, key) = self.order.first_key_value()?;
        let key = key.clone();
        let client = self.clients.get_mut(&key)?;
        let mut turn = client.turns.remove(client.next_turn())?;
        client.light_next = !client.light_next;
        let waiting = turn.queue.pop_front()?;
        if !turn.queue.is_empty() {
            // Its next request waits for the client's other connections' turns.
            client.turns.push_back(turn);
        }
        self.virtual_time = self.virtual_time.max(tag.0);
        client.finish = tag.0 + u64::from(waiting.units.max(1)) * SCALE / client.weight;
        client.waiting.remove(&waiting.id);
        self.located.remove(&waiting.id);
        self.len -= 1;
        self.order.remove(&tag);
        if client.waiting.is_empty() {
            self.clients.remove(&key);
        } else {
            client.tag = (client.finish.max(self.virtual_time), tag.1);
            self.order.insert(client.tag, key);
        }
        Some((waiting.id, waiting.units, waiting.item))
    }

    /// Takes request `id` out, wherever it is.
    pub fn remove(&mut self, id: u64) -> Option<(u32, T)> {
        let (key, connection) = self.located.remove(&id)?;
        let client = self.clients.get_mut(&key)?;
        let at = client.turn_of(connection)?;
        let queue = &mut client.turns[at].queue;
        let index = queue.iter().position(|w| w.id == id)?;
        let waiting = queue.remove(index)?;
        if queue.is_empty() {
            client.turns.remove(at);
        }
        client.waiting.remove(&id);
        self.len -= 1;
        if client.waiting.is_empty() {
            self.order.remove(&client.tag);
            self.clients.remove(&key);
        }
        Some((waiting.units, waiting.item))
    }

    /// Places held by `client`.
    pub fn queued_of(&self, client: &ClientKey) -> usize {
        self.clients.get(client).map_or(0, |c| c.waiting.len())
    }

    /// The client holding the most places, and how many.
    pub fn heaviest(&self) -> Option<(&ClientKey, usize)> {
        self.clients
            .iter()
            .map(|(key, client)| (key, client.waiting.len()))
            .max_by_key(|&(_, n)| n)
    }

    /// The id of `client`'s newest waiting request.
    pub fn newest_of(&self, client: &ClientKey) -> Option<u64> {
        self.clients.get(client)?.waiting.last().copied()
    }

    /// Each connection of `client` with requests waiting, and how many.
    pub fn connections_of(&self, client: &ClientKey) -> impl Iterator<Item = (u64, usize)> {
        self.clients.get(client).into_iter().flat_map(|c| {
            c.turns
                .iter()
                .map(|turn| (turn.connection, turn.queue.len()))
        })
    }

    /// The id of the newest waiting request of `client`'s `connection`.
    pub fn newest_of_connection(&self, client: &ClientKey, connection: u64) -> Option<u64> {
        let client = self.clients.get(client)?;
        let turn = client.turns.get(client.turn_of(connection)?)?;
        turn.queue.back().map(|waiting| waiting.id)
    }

    /// Each client with requests waiting, and how many.
    pub fn queued_by_client(&self) -> impl Iterator<Item = (&ClientKey, usize)> {
        self.clients
            .iter()
            .map(|(key, client)| (key, client.waiting.len()))
    }

    /// Clients with requests waiting.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn caller(ip: u8, connection: u64) -> Caller {
        Caller {
            client: ClientKey::Address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip))),
            weight: 1,
            connection,
        }
    }

    fn drain<T>(queue: &mut FairQueue<T>, n: usize) -> Vec<T> {
        (0..n)
            .filter_map(|_| queue.pop_front().map(|(_, _, who)| who))
            .collect()
    }

    #[test]
    fn a_light_client_is_served_next_however_long_a_heavy_ones_queue() {
        let mut queue = FairQueue::default();
        let mut id = 0;
        // The flooder: 64 connections, 10 requests each, queued first.
        for round in 0..10 {
            for connection in 0..64 {
                let _ = round;
                queue.push(id, &caller(1, connection), 4, "flood");
                id += 1;
            }
        }
        // Two dispatched, then the polite client's one request arrives.
        drain(&mut queue, 2);
        queue.push(id, &caller(2, 1000), 4, "polite");
        let next: Vec<_> = drain(&mut queue, 3);
        assert!(
            next.contains(&"polite"),
            "served within the next few: {next:?}"
        );
    }

    #[test]
    fn clients_share_by_weight_and_connections_buy_no_share() {
        let mut queue = FairQueue::default();
        let mut id = 0;
        let heavy = |connection| Caller {
            weight: 1,
            ..caller(1, connection)
        };
        let weighted = Caller {
            weight: 3,
            ..caller(2, 500)
        };
        for _ in 0..400 {
            for connection in 0..8 {
                queue.push(id, &heavy(connection), 4, "eight connections");
                id += 1;
            }
            queue.push(id, &weighted, 4, "weight three");
            id += 1;
        }
        let first = drain(&mut queue, 400);
        let weighted_share =
            first.iter().filter(|w| **w == "weight three").count() as f64 / first.len() as f64;
        assert!(
            (weighted_share - 0.75).abs() < 0.03,
            "a client of weight 3 gets three quarters against one of weight 1 with 8 \
             connections: {weighted_share}"
        );
    }

    #[test]
    fn connections_of_one_client_share_its_part_equally() {
        let mut queue = FairQueue::default();
        for id in 0..100 {
            queue.push(id, &caller(1, 1), 4, "greedy");
        }
        queue.push(100, &caller(1, 2), 4, "polite");
        let next = drain(&mut queue, 2);
        assert!(next.contains(&"polite"), "{next:?}");
    }

    #[test]
    fn inside_a_client_a_light_connection_waits_two_dispatches_and_heavy_ones_still_turn() {
        let mut queue = FairQueue::default();
        let mut id = 0;
        // One client's 64 flooding connections, 10 requests each.
        for _ in 0..10 {
            for connection in 0..64 {
                queue.push(id, &caller(1, connection), 4, connection);
                id += 1;
            }
        }
        let mut served = vec![0; 65];
        for _ in 0..20 {
            // A polite connection of the same client, one request at a time.
            queue.push(id, &caller(1, 64), 4, 64);
            id += 1;
            let next = drain(&mut queue, 2);
            assert!(
                next.contains(&64),
                "the light connection within two: {next:?}"
            );
            for connection in next {
                served[connection as usize] += 1;
            }
        }
        // The round-robin turns went to 20 different flooding connections.
        let flood_served = served[..64].iter().filter(|&&n| n > 0).count();
        assert_eq!(flood_served, 20, "{served:?}");
    }

    #[test]
    fn front_is_what_pop_front_takes() {
        let mut queue = FairQueue::default();
        for id in 0..30 {
            queue.push(id, &caller(1, id % 4), 1 + (id % 3) as u32, id);
        }
        queue.push(30, &caller(2, 9), 1, 30);
        while let Some((id, units)) = queue.front() {
            let (popped, popped_units, _) = queue.pop_front().expect("front had one");
            assert_eq!((popped, popped_units), (id, units));
        }
        assert!(queue.is_empty());
    }

    #[test]
    fn costs_weigh_and_a_client_alone_uses_everything() {
        let mut queue = FairQueue::default();
        queue.push(0, &caller(1, 1), 32, "scan");
        queue.push(1, &caller(1, 1), 32, "scan");
        for id in 2..=20 {
            queue.push(id, &caller(2, 2), 4, "search");
        }
        // A scan costs eight searches: the other client sends eight between the two.
        let order = drain(&mut queue, 21);
        let scans: Vec<usize> = (0..order.len()).filter(|&i| order[i] == "scan").collect();
        assert_eq!(scans[0], 0, "{order:?}");
        assert!((8..=10).contains(&scans[1]), "{order:?}");
        assert!(queue.is_empty());
        assert_eq!(
            queue.clients(),
            0,
            "no state is kept for clients with nothing waiting"
        );
    }

    #[test]
    fn the_heaviest_client_and_its_newest_request_are_known_and_removable() {
        let mut queue = FairQueue::default();
        for id in 0..5 {
            queue.push(id, &caller(1, id), 4, "heavy");
        }
        queue.push(5, &caller(2, 9), 4, "light");
        let (heaviest, places) = queue.heaviest().expect("clients");
        assert_eq!((heaviest.clone(), places), (caller(1, 0).client, 5));
        let newest = queue.newest_of(&caller(1, 0).client).expect("newest");
        assert_eq!(newest, 4);
        assert_eq!(queue.remove(newest).map(|(_, w)| w), Some("heavy"));
        assert_eq!(queue.queued_of(&caller(1, 0).client), 4);
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.remove(newest), None, "removed once");
    }
}
