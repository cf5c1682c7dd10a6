//! Bearer tokens, as serving ([`crate::serve::auth`]) and training (the collective and progress
//! endpoints) check them and as training's clients send them: `authorization: Bearer <token>`,
//! an HTTP header and gRPC metadata alike. A [`Token`] is kept as its SHA-256 digest (the `sha2`
//! crate the repository already hashes with) and compared in time independent of where the
//! presented one differs.

use std::path::Path;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

use crate::error::{Error, Result};

/// A secret a caller must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `headers` carry this token as a bearer token.
    pub fn presented_in(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|presented| self.matches(presented))
    }

    /// Whether `presented` is this token.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.iter().zip(&self.0).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Reads a token file: the whole file with surrounding whitespace trimmed. An empty file is an
/// error, never an open door.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Startup(format!("the token file {} is empty", path.display())));
    }
    Ok(token.to_owned())
}

/// A gRPC client interceptor that sends a bearer token on every call (none: sends nothing).
#[derive(Clone, Debug, Default)]
pub struct SendToken(Option<MetadataValue<Ascii>>);

impl SendToken {
    /// Sends `token`; refuses one that cannot travel in a header.
    pub fn new(token: Option<&str>) -> Result<Self> {
        let value = token
            .map(|token| format!("Bearer {token}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| Error::Startup("the token holds characters a header cannot carry".into()))?;
        Ok(Self(value))
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(header::AUTHORIZATION.as_str(), value.clone());
        }
        Ok(request)
    }
}

/// Middleware for a training endpoint: every gRPC call needs `token`; `/metrics` and server
/// reflection stay open, as Prometheus and grpcurl call them without credentials. A refused
/// call gets `UNAUTHENTICATED`.
pub async fn require_token(
    axum::extract::State(token): axum::extract::State<std::sync::Arc<Token>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if path == "/metrics" || path.starts_with("/grpc.reflection.") || token.presented_in(request.headers()) {
        return next.run(request).await;
    }
    tonic::Status::unauthenticated("this endpoint needs the job's token: send `authorization: Bearer <token>`")
        .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_token_matches_only_itself_as_a_bearer_token() {
        let token = Token::new("s3cret");
        let mut headers = HeaderMap::new();
        assert!(!token.presented_in(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  s3cret "));
        assert!(token.presented_in(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!token.presented_in(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cre"));
        assert!(!token.presented_in(&headers));
    }

    #[test]
    fn token_files_are_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token_file(&path).is_err());
    }
}
