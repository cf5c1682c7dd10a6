//! The job's token on training's endpoints: every rank's collective and rank 0's progress service
//! answer only gRPC calls that carry it (`authorization: Bearer <token>`); `/metrics` and server
//! reflection stay open, as Prometheus and grpcurl call them without credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use lantern_proto::auth::Token;

/// Middleware for a training endpoint: a refused call gets `UNAUTHENTICATED`.
pub async fn require_token(State(token): State<Arc<Token>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/metrics" || path.starts_with("/grpc.reflection.") || token.presented_in(request.headers()) {
        return next.run(request).await;
    }
    tonic::Status::unauthenticated("this endpoint needs the job's token: send `authorization: Bearer <token>`")
        .into_http()
}
