//! Who may call what. Every request is put in a [`Scope`] by its path alone ([`scope`]); the
//! credentials a scope needs are a bearer token in the `authorization` header, which is gRPC
//! metadata and an HTTP header alike (`authorization: Bearer <token>`).
//!
//! - **Management** (`lantern.v1.ModelService`, Triton's `Repository*` RPCs, `/v2/repository/*`)
//!   needs the management token when the worker has one (`--management-token-file`; the operator
//!   creates one per InferenceService in a Secret and mounts it into the pods).
//! - **Inference** (everything else) needs one of the API keys when the worker has any
//!   (`--api-keys-file`); the management token is accepted too.
//! - **Open**: health (`/v2/health/*`, `grpc.health.v1.Health`, `ServerLive`, `ServerReady`),
//!   model readiness (`/v2/models/{m}[/versions/{v}]/ready`, `ModelReady`: the pods' readiness
//!   probe), `/metrics` and server reflection, which probes and scrapers call without
//!   credentials.
//!
//! A refused request gets `UNAUTHENTICATED` (gRPC) or 401 with `WWW-Authenticate: Bearer` in
//! the shape of its API. Tokens are [`Token`]s: kept as digests, compared in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::{openai, rest};
use crate::error::{Error, Result};
use lantern_proto::auth::{Token, read_token_file};

/// What a request does, as far as credentials go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Open,
    Inference,
    Management,
}

/// The scope of a request path (gRPC `/package.Service/Method` or an HTTP path).
pub fn scope(path: &str) -> Scope {
    const OPEN_PREFIXES: [&str; 6] = [
        "/v2/health/",
        "/grpc.health.v1.Health/",
        "/grpc.reflection.",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
    ];
    // Model readiness is what the kubelet's readiness probe asks, without credentials.
    let model_ready = path.starts_with("/v2/models/") && path.ends_with("/ready");
    const MANAGEMENT_PREFIXES: [&str; 3] =
        ["/lantern.v1.ModelService/", "/inference.GRPCInferenceService/Repository", "/v2/repository/"];
    if path == "/metrics" || model_ready || OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
        Scope::Open
    } else if MANAGEMENT_PREFIXES.iter().any(|p| path.starts_with(p)) {
        Scope::Management
    } else {
        Scope::Inference
    }
}

/// The tokens this worker accepts.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    management: Option<Token>,
    api_keys: Vec<Token>,
}

impl Credentials {
    /// Credentials from tokens; no management token leaves management open, no API keys leave
    /// inference open.
    pub fn new(management_token: Option<&str>, api_keys: &[String]) -> Self {
        Self {
            management: management_token.map(Token::new),
            api_keys: api_keys.iter().map(|k| Token::new(k)).collect(),
        }
    }

    /// Reads the management token ([`read_token_file`]) and the API keys (one per line; blank
    /// lines and `#` comments skipped). An empty file is an error, not an open door.
    pub fn from_files(management_token_file: Option<&Path>, api_keys_file: Option<&Path>) -> Result<Self> {
        let management = management_token_file.map(read_token_file).transpose()?;
        let api_keys: Vec<String> = match api_keys_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let keys: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                if keys.is_empty() {
                    return Err(Error::Startup(format!("the API keys file {} holds no key", path.display())));
                }
                keys
            }
            None => Vec::new(),
        };
        Ok(Self::new(management.as_deref(), &api_keys))
    }

    /// Whether management calls need a token.
    pub fn guards_management(&self) -> bool {
        self.management.is_some()
    }

    /// Whether a request of `scope` carrying `headers` may proceed.
    pub fn allows(&self, scope: Scope, headers: &HeaderMap) -> bool {
        let presented = |token: &Token| token.presented_in(headers);
        match scope {
            Scope::Open => true,
            Scope::Management => self.management.as_ref().is_none_or(presented),
            Scope::Inference => {
                self.api_keys.is_empty()
                    || self.api_keys.iter().any(presented)
                    || self.management.as_ref().is_some_and(presented)
            }
        }
    }
}

/// The middleware: passes allowed requests on, answers the rest `UNAUTHENTICATED` / 401.
pub async fn authorize(State(credentials): State<Arc<Credentials>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let scope = scope(path);
    if credentials.allows(scope, request.headers()) {
        return next.run(request).await;
    }
    let what = match scope {
        Scope::Management => "management calls need the management token",
        _ => "this server needs an API key",
    };
    let message = format!("{what}: send `authorization: Bearer <token>`");
    tracing::debug!(path, "refused a request without valid credentials");
    if is_grpc(request.headers()) {
        return tonic::Status::unauthenticated(message).into_http();
    }
    let mut response = match path.starts_with("/v1/") {
        true => openai::unauthorized(message),
        false => rest::error_response(StatusCode::UNAUTHORIZED, message),
    };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response.into_response()
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        headers
    }

    #[test]
    fn paths_fall_into_their_scopes() {
        for open in [
            "/v2/health/live",
            "/grpc.health.v1.Health/Check",
            "/metrics",
            "/inference.GRPCInferenceService/ServerLive",
            "/v2/models/m/versions/2/ready",
        ] {
            assert_eq!(scope(open), Scope::Open, "{open}");
        }
        for management in [
            "/lantern.v1.ModelService/SetServingConfig",
            "/inference.GRPCInferenceService/RepositoryModelUnload",
            "/v2/repository/models/iris/unload",
            "/v2/repository/index",
        ] {
            assert_eq!(scope(management), Scope::Management, "{management}");
        }
        for inference in ["/v1/chat/completions", "/v2/models/iris/infer", "/inference.GRPCInferenceService/ModelInfer"]
        {
            assert_eq!(scope(inference), Scope::Inference, "{inference}");
        }
    }

    #[test]
    fn management_needs_the_token_and_inference_an_api_key_once_configured() {
        let open = Credentials::default();
        assert!(open.allows(Scope::Management, &HeaderMap::new()));
        assert!(open.allows(Scope::Inference, &HeaderMap::new()));

        let guarded = Credentials::new(Some("admin"), &[]);
        assert!(!guarded.allows(Scope::Management, &HeaderMap::new()));
        assert!(!guarded.allows(Scope::Management, &with_token("wrong")));
        assert!(guarded.allows(Scope::Management, &with_token("admin")));
        assert!(guarded.allows(Scope::Inference, &HeaderMap::new()));

        let keyed = Credentials::new(Some("admin"), &["k1".into(), "k2".into()]);
        assert!(!keyed.allows(Scope::Inference, &HeaderMap::new()));
        assert!(keyed.allows(Scope::Inference, &with_token("k2")));
        assert!(keyed.allows(Scope::Inference, &with_token("admin")));
        assert!(!keyed.allows(Scope::Management, &with_token("k1")));
        assert!(keyed.allows(Scope::Open, &HeaderMap::new()));
    }

    #[test]
    fn empty_credential_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n  \n").unwrap();
        assert!(Credentials::from_files(Some(&empty), None).is_err());
        std::fs::write(&empty, "# only a comment\n").unwrap();
        assert!(Credentials::from_files(None, Some(&empty)).is_err());
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# team a\nk1\n\nk2\n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "admin\n").unwrap();
        let credentials = Credentials::from_files(Some(&token), Some(&keys)).unwrap();
        assert!(credentials.allows(Scope::Inference, &with_token("k2")));
        assert!(credentials.allows(Scope::Management, &with_token("admin")));
    }
}
