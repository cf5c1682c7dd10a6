//! Bearer tokens, as every Lantern call carries them: `authorization: Bearer <token>`, an HTTP
//! header and gRPC metadata alike. The worker's serving and training endpoints check a
//! [`Token`]; the operator and training's clients send one with [`SendToken`]. A token is kept
//! as its SHA-256 digest (`sha2`) and compared in time independent of where the presented one
//! differs.

use std::path::Path;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

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

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An empty token file is an error, never an open door.
    #[error("the token file {path} is empty")]
    Empty { path: String },
    #[error("the token holds characters a header cannot carry")]
    NotAHeader,
}

/// Reads a token file: the whole file with surrounding whitespace trimmed.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: shown(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: shown() });
    }
    Ok(token.to_owned())
}

/// A gRPC client interceptor that sends a bearer token on every call (none: sends nothing).
#[derive(Clone, Debug, Default)]
pub struct SendToken(Option<MetadataValue<Ascii>>);

impl SendToken {
    /// Sends `token`; refuses one that cannot travel in a header.
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        let value = token
            .map(|token| format!("Bearer {token}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| TokenError::NotAHeader)?;
        Ok(Self(value))
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(header::AUTHORIZATION.as_str(), value.clone());
        }
        Ok(request)
    }
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
        let dir = std::env::temp_dir().join(format!("lantern-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_token_file(&path), Err(TokenError::Empty { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_interceptor_sends_the_token_and_refuses_one_a_header_cannot_carry() {
        let mut send = SendToken::new(Some("abc")).unwrap();
        let request = send.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer abc");
        let request = SendToken::default().call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(matches!(SendToken::new(Some("a\nb")), Err(TokenError::NotAHeader)));
    }
}
