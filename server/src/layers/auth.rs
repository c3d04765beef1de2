//! Bearer-token authentication for the VectorIndex service (`--auth-token-file`).
//!
//! Every VectorIndex call must carry `authorization: Bearer <token>`; anything else is answered
//! `UNAUTHENTICATED` before admission, so an unauthenticated flood cannot take queue places
//! from real clients. Health and reflection stay open (load balancers and probes hold no
//! token). The comparison is constant-time (`subtle`), so response timing does not reveal how
//! much of a guess was right, and the token is never logged (its `Debug` is redacted).

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

/// The authentication flag (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Require `authorization: Bearer <token>` on every VectorIndex call, the token read from
    /// this file (health and reflection stay open).
    #[arg(long, env = "VECRIG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
}

/// The secret every VectorIndex call must present.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

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
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace, such as a final newline, ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text.trim()).map_err(|reason| TokenError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// A token from its text.
    pub fn new(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            return Err("is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("holds characters a bearer token cannot have (spaces, control, non-ASCII)");
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether `header` is `Bearer <this token>`, compared in constant time.
    fn admits(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(presented) = header
            .map(http::HeaderValue::as_bytes)
            .and_then(|v| v.strip_prefix(b"Bearer "))
        else {
            return false;
        };
        presented.ct_eq(&self.0).into()
    }
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
        let refused = self
            .token
            .as_ref()
            .is_some_and(|t| !t.admits(request.headers().get(http::header::AUTHORIZATION)));
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
        assert!(token.admits(Some(&header("Bearer s3cret-token"))));
        for wrong in [
            "Bearer s3cret-tokem",
            "Bearer s3cret-token2",
            "Bearer s3cret",
            "Bearer ",
            "bearer s3cret-token",
            "Basic s3cret-token",
            "s3cret-token",
        ] {
            assert!(!token.admits(Some(&header(wrong))), "{wrong:?}");
        }
        assert!(!token.admits(None));
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
}
