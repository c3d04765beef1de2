//! Bearer-token authentication for the VectorIndex service (`--auth-token-file`).
//!
//! Every VectorIndex call must carry `authorization: Bearer <token>`; anything else is answered
//! `UNAUTHENTICATED` before admission, so an unauthenticated flood cannot take queue places
//! from real clients. Health and reflection stay open (load balancers and probes hold no
//! token). The comparison is constant-time (`subtle`), so response timing does not reveal how
//! much of a guess was right, and the token is never logged (its `Debug` is redacted).
//!
//! The file holds one token, or one line per tenant, `token tenant [weight]`: a call is then
//! its tenant's, and fair admission shares capacity between tenants by weight (instead of
//! between peer addresses). A malformed file is refused at start, naming the line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::caller::{Caller, ClientKey};

/// The authentication flag (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Require `authorization: Bearer <token>` on every VectorIndex call, the token read from
    /// this file (health and reflection stay open). One token, or lines of
    /// `token tenant [weight]`: each tenant then gets its own fair share (weight 1 by default).
    #[arg(long, env = "VECRIG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
}

/// The secrets VectorIndex calls may present: one, or one per tenant.
#[derive(Clone)]
pub struct Token(Arc<[Entry]>);

/// One token's bytes, and its tenant if the file names one.
type Entry = (Arc<[u8]>, Option<Tenant>);

/// A tenant named in the token file: a client of its own for fair admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (a metric label: letters, digits, `-`, `_`, `.`).
    pub name: Arc<str>,
    /// Its share relative to other tenants'.
    pub weight: u32,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self
            .0
            .iter()
            .filter_map(|(_, t)| t.as_ref().map(|t| &*t.name))
            .collect();
        write!(f, "Token(redacted; tenants {tenants:?})")
    }
}

/// Largest tenant weight: shares stay comparable, and tags cannot overflow.
const MAX_WEIGHT: u32 = 1000;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It could not be read.
    #[error("cannot read the auth token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// It holds no token, or one that cannot travel in a header.
    #[error("the auth token file {path} {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tenant line is malformed.
    #[error("the auth token file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong with it (never the token itself).
        reason: String,
    },
}

impl Token {
    /// Reads the token from `path`: one token (surrounding whitespace, such as a final
    /// newline, ignored), or one `token tenant [weight]` line per tenant (blank lines and
    /// `#` comments ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let lines: Vec<(usize, Vec<&str>)> = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.split_whitespace().collect::<Vec<_>>()))
            .filter(|(_, fields)| fields.first().is_some_and(|f| !f.starts_with('#')))
            .collect();
        let invalid = |reason| TokenError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        match lines.as_slice() {
            [] => Err(invalid("is empty")),
            [(_, fields)] if fields.len() == 1 => Self::new(fields[0]).map_err(invalid),
            _ => {
                let mut entries = Vec::with_capacity(lines.len());
                for (line, fields) in &lines {
                    let line_error = |reason: String| TokenError::Line {
                        path: path.display().to_string(),
                        line: *line,
                        reason,
                    };
                    let entry = tenant_line(fields).map_err(line_error)?;
                    if entries.iter().any(|(_, t): &Entry| t == &entry.1) {
                        return Err(line_error("a tenant named twice".to_string()));
                    }
                    if entries.iter().any(|(s, _)| *s == entry.0) {
                        return Err(line_error("a token given twice".to_string()));
                    }
                    entries.push(entry);
                }
                Ok(Self(entries.into()))
            }
        }
    }

    /// A token from its text (no tenant).
    pub fn new(token: &str) -> Result<Self, &'static str> {
        Ok(Self(vec![(secret(token)?, None)].into()))
    }

    /// The entry whose token `header` presents as `Bearer <token>`, compared in constant time
    /// against every entry (so the time taken does not tell which, if any, matched).
    fn admits(&self, header: Option<&http::HeaderValue>) -> Option<Option<&Tenant>> {
        let presented = header
            .map(http::HeaderValue::as_bytes)
            .and_then(|v| v.strip_prefix(b"Bearer "))?;
        let mut found = None;
        for (secret, tenant) in self.0.iter() {
            if bool::from(presented.ct_eq(secret)) {
                found = Some(tenant.as_ref());
            }
        }
        found
    }
}

/// A token's bytes, if it can travel in a header.
fn secret(token: &str) -> Result<Arc<[u8]>, &'static str> {
    if token.is_empty() {
        return Err("is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("holds characters a bearer token cannot have (spaces, control, non-ASCII)");
    }
    Ok(token.as_bytes().into())
}

/// One `token tenant [weight]` line.
fn tenant_line(fields: &[&str]) -> Result<(Arc<[u8]>, Option<Tenant>), String> {
    let (token, name, weight) = match fields {
        [token, name] => (token, name, 1),
        [token, name, weight] => {
            let weight = weight
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| format!("the weight must be a whole number in 1..={MAX_WEIGHT}"))?;
            (token, name, weight)
        }
        _ => {
            return Err(format!(
                "expected `token tenant [weight]`, found {} fields",
                fields.len()
            ));
        }
    };
    let secret = secret(token).map_err(|reason| format!("the token {reason}"))?;
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "the tenant name {name:?} must be at most 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok((
        secret,
        Some(Tenant {
            name: (*name).into(),
            weight,
        }),
    ))
}

/// Puts a service behind a bearer token.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    token: Option<Token>,
}

impl AuthLayer {
    /// Requires `token`; `None` lets every call through (no `--auth-token-file`).
    pub fn new(token: Option<Token>) -> Self {
        Self { token }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            token: self.token.clone(),
        }
    }
}

/// A service that checks the bearer token first.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    token: Option<Token>,
}

impl<S: NamedService> NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut request = request;
        let refused = match &self.token {
            None => false,
            Some(token) => match token.admits(request.headers().get(http::header::AUTHORIZATION)) {
                None => true,
                Some(None) => false,
                Some(Some(tenant)) => {
                    // The call is its tenant's: admission shares between tenants, by weight.
                    let mut caller = Caller::of(&request);
                    caller.client = ClientKey::Tenant(Arc::clone(&tenant.name));
                    caller.weight = tenant.weight;
                    request.extensions_mut().insert(caller);
                    false
                }
            },
        };
        Box::pin(async move {
            if refused {
                return Ok(Status::unauthenticated(
                    "missing or wrong bearer token: send `authorization: Bearer <token>`",
                )
                .into_http());
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::new("s3cret-token").expect("token");
        let header = |v: &str| http::HeaderValue::from_str(v).expect("header");
        assert!(token.admits(Some(&header("Bearer s3cret-token"))).is_some());
        for wrong in [
            "Bearer s3cret-tokem",
            "Bearer s3cret-token2",
            "Bearer s3cret",
            "Bearer ",
            "bearer s3cret-token",
            "Basic s3cret-token",
            "s3cret-token",
        ] {
            assert!(token.admits(Some(&header(wrong))).is_none(), "{wrong:?}");
        }
        assert!(token.admits(None).is_none());
    }

    #[test]
    fn bad_token_files_are_refused_and_the_token_never_printed() {
        assert!(Token::new("").is_err());
        assert!(Token::new("two words").is_err());
        assert!(Token::new("naïve").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").expect("write");
        let token = Token::from_file(&path).expect("token with a final newline");
        assert!(!format!("{token:?}").contains("abc123"));
        assert!(Token::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn tenant_lines_name_tenants_with_weights_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# tenants\nalpha-secret analytics 3\n\nbeta-secret search\n",
        )
        .expect("write");
        let token = Token::from_file(&path).expect("tenant file");
        let header = |v: &str| http::HeaderValue::from_str(v).expect("header");
        let analytics = token
            .admits(Some(&header("Bearer alpha-secret")))
            .flatten()
            .expect("a tenant");
        assert_eq!((&*analytics.name, analytics.weight), ("analytics", 3));
        let search = token
            .admits(Some(&header("Bearer beta-secret")))
            .flatten()
            .expect("a tenant");
        assert_eq!((&*search.name, search.weight), ("search", 1));
        assert!(token.admits(Some(&header("Bearer gamma"))).is_none());
        assert!(!format!("{token:?}").contains("secret"), "{token:?}");

        for (text, line, what) in [
            ("a t\nb t\n", 2, "named twice"),
            ("a t 0\n", 1, "weight"),
            ("a t x\n", 1, "weight"),
            ("a t 1 extra\n", 1, "fields"),
            ("ok t\nbad\n", 2, "fields"),
            ("a t/x\n", 1, "tenant name"),
            ("a t\na u\n", 2, "twice"),
        ] {
            std::fs::write(&path, text).expect("write");
            let error = Token::from_file(&path).expect_err(text).to_string();
            assert!(error.contains(&format!("line {line}")), "{text:?}: {error}");
            assert!(error.contains(what), "{text:?}: {error}");
        }
    }
}
