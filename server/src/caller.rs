//! Who a request comes from, for fair admission: the client (a tenant, or the peer's
//! address) and the connection it arrived on.
//!
//! The outermost layer puts a [`Caller`] in every request's extensions from the connection
//! it arrived on; authentication replaces the client with the tenant when the token file
//! names tenants; admission shares capacity fairly across clients, then across each
//! client's connections.

use std::net::IpAddr;
use std::sync::Arc;

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
