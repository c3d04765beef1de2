//! Who a request comes from, for fair admission: the one rule for what a *client* is, and
//! the connection a request arrived on.
//!
//! The rule, in order:
//! 1. the **tenant**, where the auth token file names tenants (`token tenant [weight]`) and the
//!    request's token is one of theirs;
//! 2. else the **address**: the peer's IP address, or, when the peer is a configured trusted
//!    proxy (`--trusted-proxies`), the address that proxy forwards in
//!    `--client-address-header` (`x-forwarded-for` by default; see [`ClientRule::address`]);
//!    a forwarding header from any other peer is ignored, since anybody can send one;
//! 3. then, inside one client, the **connection**.
//!
//! The outermost layer (pacing) puts a [`Caller`] in every request's extensions with the
//! address part of the rule ([`ClientRule`]); authentication replaces the client with the
//! tenant; admission shares capacity fairly across clients by weight, then across each
//! client's connections, and metrics count per client (its [`ClientKey::label`]).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use tonic::codegen::http;

/// A client: what fair admission shares capacity between.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    /// Nothing is known of it (a request built in-process, in tests).
    Anonymous,
    /// The peer's IP address: more connections from one address buy no more share.
    Address(IpAddr),
    /// A tenant named in the auth token file.
    Tenant(Arc<str>),
}

impl ClientKey {
    /// How the client is named in metrics (`127.0.0.1`, `tenant:analytics`, `anonymous`).
    pub fn label(&self) -> String {
        match self {
            ClientKey::Anonymous => "anonymous".to_string(),
            ClientKey::Address(ip) => ip.to_string(),
            ClientKey::Tenant(name) => format!("tenant:{name}"),
        }
    }
}

/// Who a request comes from, from its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client it counts against.
    pub client: ClientKey,
    /// The client's share, relative to other clients' (1 unless its tenant says otherwise).
    pub weight: u32,
    /// The connection it arrived on (unique while the server runs).
    pub connection: u64,
}

impl Caller {
    /// The caller of a request: from its extensions, or an anonymous one.
    pub fn of<B>(request: &tonic::codegen::http::Request<B>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::unknown)
    }

    /// A caller of whom nothing is known: every such request is one client on one
    /// connection (what FIFO admission makes of all of them).
    pub fn unknown() -> Caller {
        Caller {
            client: ClientKey::Anonymous,
            weight: 1,
            connection: 0,
        }
    }
}

/// The address flags of the rule (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Peers (CIDR blocks, comma-separated) trusted to name the client's address in
    /// --client-address-header; from every other peer the header is ignored. Default: none.
    #[arg(long, env = "VECRIG_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,
    /// The header in which a trusted proxy names the client's address (the rightmost
    /// address in it that is not itself a trusted proxy).
    #[arg(
        long,
        env = "VECRIG_CLIENT_ADDRESS_HEADER",
        default_value = "x-forwarded-for",
        value_parser = parse_header_name
    )]
    pub client_address_header: http::HeaderName,
}

fn parse_header_name(text: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_str(&text.to_ascii_lowercase())
        .map_err(|_| format!("{text:?} is not a header name"))
}

/// A block of addresses, `10.0.0.0/8` or `fd00::/8` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `address` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((network, width), (address, address_width)) = (bits(self.network), bits(address));
        if width != address_width {
            return false;
        }
        let host_bits = u32::from(width - self.prefix);
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        (network & mask) == (address & mask)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network = IpAddr::from_str(address)
            .map_err(|_| format!("{text:?} is not an address or a CIDR block"))?
            .to_canonical();
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0..={width}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// The address part of the rule: which peers may name the client's address, and in which
/// header.
#[derive(Debug, Clone)]
pub struct ClientRule {
    trusted_proxies: Arc<[Cidr]>,
    header: http::HeaderName,
}

impl Default for ClientRule {
    /// No trusted proxies: the client is always the peer's address.
    fn default() -> Self {
        Self::new(Vec::new(), http::HeaderName::from_static("x-forwarded-for"))
    }
}

impl From<&Args> for ClientRule {
    fn from(args: &Args) -> Self {
        Self::new(
            args.trusted_proxies.clone(),
            args.client_address_header.clone(),
        )
    }
}

impl ClientRule {
    /// Trusts `trusted_proxies` to name the client's address in `header`.
    pub fn new(trusted_proxies: Vec<Cidr>, header: http::HeaderName) -> Self {
        Self {
            trusted_proxies: trusted_proxies.into(),
            header,
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|cidr| cidr.contains(address))
    }

    /// The client's address of a request from `peer` with `headers`: the peer itself, unless
    /// it is a trusted proxy; then the rightmost address in the header (all its lines, in
    /// order) that is not a trusted proxy too, since each proxy appends the address it was
    /// reached from and only the trusted ones' entries can be believed. A header that is
    /// absent or holds no readable address leaves the peer (the proxy) as the client.
    pub fn address(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trusted_proxies.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all(&self.header)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(address) = forwarded_address(entry) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }

    /// The [`Caller`] of a request from `peer` (if known) on `connection`: its address by
    /// this rule; authentication may make it a tenant later.
    pub fn caller(
        &self,
        peer: Option<IpAddr>,
        headers: &http::HeaderMap,
        connection: u64,
    ) -> Caller {
        Caller {
            client: peer.map_or(ClientKey::Anonymous, |peer| {
                ClientKey::Address(self.address(peer, headers))
            }),
            weight: 1,
            connection,
        }
    }
}

/// One entry of a forwarding header: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443` or
/// `192.0.2.1:443`.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = IpAddr::from_str(entry) {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = std::net::SocketAddr::from_str(entry) {
        return Some(socket.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(proxies: &[&str]) -> ClientRule {
        let proxies = proxies.iter().map(|p| p.parse().expect("cidr")).collect();
        ClientRule::default().with_proxies(proxies)
    }

    impl ClientRule {
        fn with_proxies(self, proxies: Vec<Cidr>) -> Self {
            Self::new(proxies, self.header)
        }
    }

    fn forwarded(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("header"));
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_forwarded_address_counts_only_from_a_trusted_proxy() {
        let rule = rule(&["10.0.0.0/8"]);
        let headers = forwarded("198.51.100.7");
        // From a peer that is no configured proxy the header is a claim anybody can make.
        assert_eq!(rule.address(ip("192.0.2.1"), &headers), ip("192.0.2.1"));
        assert_eq!(rule.address(ip("10.1.2.3"), &headers), ip("198.51.100.7"));
        // No proxies configured: never.
        assert_eq!(
            ClientRule::default().address(ip("10.1.2.3"), &headers),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let rule = rule(&["10.0.0.0/8", "fd00::/8"]);
        // The client wrote a spoofed first entry; the trusted proxies appended the rest.
        let headers = forwarded("1.2.3.4, 198.51.100.7, 10.0.0.5");
        assert_eq!(rule.address(ip("10.9.9.9"), &headers), ip("198.51.100.7"));
        // Ports and brackets, and IPv4-mapped peers.
        let headers = forwarded("[2001:db8::1]:443");
        assert_eq!(rule.address(ip("fd00::1"), &headers), ip("2001:db8::1"));
        let headers = forwarded("198.51.100.7:5000");
        assert_eq!(
            rule.address(ip("::ffff:10.0.0.1"), &headers),
            ip("198.51.100.7")
        );
        // Garbage stops the walk: the last believable address stands.
        let headers = forwarded("nonsense, 10.0.0.7");
        assert_eq!(rule.address(ip("10.0.0.1"), &headers), ip("10.0.0.7"));
        assert_eq!(
            rule.address(ip("10.0.0.1"), &forwarded("x")),
            ip("10.0.0.1")
        );
        assert_eq!(
            rule.address(ip("10.0.0.1"), &http::HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_configured_header_name_is_read_instead() {
        let rule = ClientRule::new(
            vec!["127.0.0.1".parse().expect("cidr")],
            parse_header_name("X-Real-IP").expect("name"),
        );
        let mut headers = forwarded("1.1.1.1");
        headers.insert("x-real-ip", "2.2.2.2".parse().expect("header"));
        assert_eq!(rule.address(ip("127.0.0.1"), &headers), ip("2.2.2.2"));
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let block: Cidr = "192.168.0.0/16".parse().expect("cidr");
        assert!(block.contains(ip("192.168.44.1")));
        assert!(block.contains(ip("::ffff:192.168.0.1")));
        assert!(!block.contains(ip("192.169.0.1")));
        assert!(!block.contains(ip("::1")));
        let everything: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(everything.contains(ip("8.8.8.8")));
        let one: Cidr = "::1".parse().expect("cidr");
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
