//! Which VectorIndex method a request calls, read from its path once per request.
//!
//! The layers, admission and the whole-request reads all decide by method. The outermost
//! layer (pacing) reads it from the path ([`Method::of`]) and puts it in the request's
//! extensions ([`Method::carry`]); every layer inside takes it from there
//! ([`Method::of_request`]). Knows nothing of the layers that use it.

use tonic::codegen::http;

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

    /// Reads the method of `request` from its path and carries it in its extensions, for the
    /// layers inside; `None` (and nothing carried) for a call to another service (health,
    /// reflection).
    pub fn carry<B>(request: &mut http::Request<B>) -> Option<Method> {
        let path = request.uri().path();
        let method = Self::is_vector_index(path).then(|| Self::of(path))?;
        request.extensions_mut().insert(method);
        Some(method)
    }

    /// The method of `request`, as the outermost layer carried it; read from the path only
    /// where no layer did (a layer under test on its own).
    pub fn of_request<B>(request: &http::Request<B>) -> Method {
        Self::of_parts(request.extensions(), request.uri())
    }

    /// [`Method::of_request`] of a request taken apart.
    pub fn of_parts(extensions: &http::Extensions, uri: &http::Uri) -> Method {
        extensions
            .get::<Method>()
            .copied()
            .unwrap_or_else(|| Self::of(uri.path()))
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

    #[test]
    fn the_method_is_carried_in_the_request() {
        let mut request = http::Request::builder()
            .uri("/vecrig.v1.VectorIndex/Search")
            .body(())
            .expect("request");
        assert_eq!(Method::carry(&mut request), Some(Method::Search));
        // Inner layers read what was carried, not the path.
        *request.uri_mut() = http::Uri::from_static("/vecrig.v1.VectorIndex/Upsert");
        assert_eq!(Method::of_request(&request), Method::Search);
        let mut health = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .expect("request");
        assert_eq!(Method::carry(&mut health), None);
        assert!(health.extensions().get::<Method>().is_none());
    }
}
