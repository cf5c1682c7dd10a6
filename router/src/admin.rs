//! The admin port: `/metrics` (Prometheus text), `/healthz`, and `/stats`, the JSON the
//! operator's autoscaler reads — requests held for want of a ready pod, and each ready pod's
//! requests in flight.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use super::pool::Pool;

/// Serves the admin port until the process ends.
pub async fn serve(listener: TcpListener, pool: Pool, metrics: Metrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (pool, metrics) = (pool.clone(), metrics.clone());
        let service = service_fn(move |request| {
            let response = answer(&request, &pool, &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `/stats`: what the autoscaler reads.
pub fn stats(pool: &Pool, metrics: &Metrics) -> serde_json::Value {
    let pods = pool.pods();
    let in_flight: usize = pods.iter().map(|pod| pod.in_flight()).sum();
    let pods: Vec<serde_json::Value> = pods
        .iter()
        .map(|pod| serde_json::json!({"address": pod.addr.to_string(), "in_flight": pod.in_flight()}))
        .collect();
    serde_json::json!({"held": metrics.held(), "in_flight": in_flight, "pods": pods})
}

fn answer(request: &Request<Incoming>, pool: &Pool, metrics: &Metrics) -> Response<Full<Bytes>> {
    let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            let (content_type, body) = lantern_telemetry::exposition::negotiate(accept, metrics.encode());
            (StatusCode::OK, content_type, body)
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok".to_owned()),
        "/stats" => (StatusCode::OK, "application/json", stats(pool, metrics).to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
