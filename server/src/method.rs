//! Which VectorIndex method a request calls, read from its path in one place.
//!
//! The layers, admission and the whole-request reads all decide by method; they all ask
//! [`Method::of`] rather than each parsing the path its own way. Knows nothing of the layers
//! that use it.

/// The path prefix of every VectorIndex method (`/package.Service/`).
pub const VECTOR_INDEX_PREFIX: &str = "/vecrig.v1.VectorIndex/";

/// A VectorIndex method, from a fixed set (metric labels must never come from input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `Upsert`.
    Upsert,
    /// `Search`.
    Search,
    /// `Delete`.
    Delete,
    /// `Get`.
    Get,
    /// `Stats`.
    Stats,
    /// Anything else (answered UNIMPLEMENTED by the service).
    Other,
}

impl Method {
    /// The method a gRPC path names: its last segment. The layers that ask wrap only the
    /// VectorIndex service, so the service part is not checked again here.
    pub fn of(path: &str) -> Method {
        match path.rsplit('/').next().unwrap_or_default() {
            "Upsert" => Method::Upsert,
            "Search" => Method::Search,
            "Delete" => Method::Delete,
            "Get" => Method::Get,
            "Stats" => Method::Stats,
            _ => Method::Other,
        }
    }

    /// Whether `path` is a call to the VectorIndex service at all (health and reflection are
    /// not).
    pub fn is_vector_index(path: &str) -> bool {
        path.starts_with(VECTOR_INDEX_PREFIX)
    }

    /// The method's name, as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Method::Upsert => "Upsert",
            Method::Search => "Search",
            Method::Delete => "Delete",
            Method::Get => "Get",
            Method::Stats => "Stats",
            Method::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_the_last_segment_of_the_path() {
        assert_eq!(Method::of("/vecrig.v1.VectorIndex/Search"), Method::Search);
        assert_eq!(Method::of("/vecrig.v1.VectorIndex/Upsert"), Method::Upsert);
        assert_eq!(Method::of("/vecrig.v1.VectorIndex/Nope"), Method::Other);
        assert_eq!(Method::Other.name(), "other");
        assert!(Method::is_vector_index("/vecrig.v1.VectorIndex/Get"));
        assert!(!Method::is_vector_index("/grpc.health.v1.Health/Check"));
    }
}
