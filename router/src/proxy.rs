//! Forwarding one request: read its affinity key where it has one, choose a pod, send the
//! request on that pod's HTTP/2 connection, and stream the response back — gRPC (trailers
//! included) and HTTP alike, server-sent events and streaming RPCs as they come.
//!
//! Retries: a request is sent again, to a pod not yet tried, only when it certainly never
//! reached a model — the pod refused the connection, or its connection handed the request back
//! unsent (closing or draining: hyper's `try_send_request`). Once a request is on the wire it is
//! never sent again; if the connection fails then, the caller gets 502 / `UNAVAILABLE`.
//!
//! Holding: while no pod is ready (a service scaled to zero, or starting), a request waits up
//! to the hold time for one, at most `max_held` at once; then 503 / `UNAVAILABLE` with
//! `Retry-After`. A caller that goes away while held is dropped from the wait.
//!
//! Unknown models: given the models the service serves (`--models`, which the operator passes
//! for a service without API keys — with keys, the worker's 401 comes first), a request naming
//! another in an OIP REST path or a language-model body gets the worker's own 404 /
//! `NOT_FOUND` from the router, without a pod hop. Other requests (gRPC `ModelInfer`, whose
//! body is not read) reach a pod, which answers the same.
//!
//! Headers pass through unchanged (the routing key, `model:version` labels, credentials), but
//! for the hop-by-hop ones, which HTTP/2 forbids, and `traceparent`, which names the router's
//! span so the worker's spans join the caller's trace through it.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Incoming;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::affinity;
use super::metrics::{Metrics, Retry};
use super::pool::{InFlight, Pool};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body as sent to a pod.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;
/// A response body as sent to the caller.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The most of a language-model request's body read to find its affinity key (the worker's own
/// limit for the OpenAI API); a larger body goes on unread, without a key.
const KEY_BODY_LIMIT: usize = 4 << 20;

/// How requests wait while no pod is ready.
#[derive(Clone, Copy, Debug)]
pub struct HoldSettings {
    /// Longest wait for a ready pod.
    pub timeout: Duration,
    /// Most requests waiting at once; one more is refused at once.
    pub max_held: usize,
}

/// The proxy for one service's pods; cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    pool: Pool,
    hold: HoldSettings,
    metrics: Metrics,
    /// The models the pods serve; `None`: not known, every name goes to a pod.
    models: Option<Arc<BTreeSet<String>>>,
}

/// Why the router answered a request itself.
#[derive(Debug)]
enum Refusal {
    /// No pod was ready within the hold time, or too many requests were already held.
    NoPod(String),
    /// Every ready pod refused the request before it was sent.
    AllRefused,
    /// The connection failed after the request was sent: it may have run.
    Failed(String),
    /// The caller's body could not be read.
    Body(String),
    /// The request names a model the service does not serve.
    UnknownModel(String),
}

impl Proxy {
    /// `models`: the names the pods serve, when known.
    pub fn new(pool: Pool, hold: HoldSettings, metrics: Metrics, models: Option<BTreeSet<String>>) -> Self {
        Self { pool, hold, metrics, models: models.map(Arc::new) }
    }

    /// Refuses a request that names a model the pods do not serve.
    fn check_model(&self, model: Option<&str>) -> Result<(), Refusal> {
        match (&self.models, model) {
            (Some(models), Some(model)) if !models.contains(model) => Err(Refusal::UnknownModel(model.to_owned())),
            _ => Ok(()),
        }
    }

    /// Forwards `request` and answers with the pod's response, or the router's own refusal in the
    /// caller's protocol.
    pub async fn handle(&self, request: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
        let grpc = is_grpc(request.headers());
        let openai = request.uri().path().starts_with("/v1/");
        let span = tracing::info_span!("route", otel.name = %request.uri().path(), otel.kind = "server", pod = tracing::field::Empty);
        if let Err(error) = span.set_parent(lantern_telemetry::caller_context(request.headers())) {
            tracing::debug!(%error, "cannot continue the caller's trace");
        }
        let response = self.forward(request).instrument(span).await;
        Ok(response.unwrap_or_else(|refusal| refusal.response(grpc, openai, self.hold.timeout)))
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<ResponseBody>, Refusal> {
        let (mut parts, body) = request.into_parts();
        self.check_model(affinity::path_model(parts.uri.path()))?;
        let (body, keyed) = match affinity::keyed(parts.uri.path()) {
            true => read_key(parts.uri.path(), body).await?,
            false => (body.map_err(BoxError::from).boxed_unsync(), None),
        };
        self.check_model(keyed.as_ref().map(|k| k.model.as_str()))?;
        let key = keyed.map(|k| k.key);
        strip_hop_by_hop(&mut parts.headers);
        lantern_telemetry::inject_context(&mut parts.headers);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut request = Request::from_parts(parts, body);
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let Some(in_flight) = self.pool.choose(key, &tried) else {
                if !tried.is_empty() {
                    return Err(Refusal::AllRefused);
                }
                self.hold().await?;
                continue;
            };
            let addr = in_flight.pod.addr;
            tracing::Span::current().record("pod", tracing::field::display(addr));
            *request.uri_mut() = pod_uri(addr, &path)?;
            let mut sender = match in_flight.pod.sender().await {
                Ok(sender) => sender,
                Err(error) => {
                    tracing::warn!(%addr, %error, "cannot connect to the pod; trying another");
                    self.metrics.retried(Retry::Connect);
                    tried.push(addr);
                    continue;
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(|body| Tracked { body, _in_flight: in_flight }.boxed_unsync())),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        tracing::info!(%addr, error = %error.error(), "the pod's connection refused the request; trying another");
                        self.metrics.retried(Retry::Refused);
                        tried.push(addr);
                        request = unsent;
                    }
                    None => return Err(Refusal::Failed(error.into_error().to_string())),
                },
            }
        }
    }

    /// Waits for a ready pod, counted as held; refuses when too many wait or none comes.
    async fn hold(&self) -> Result<(), Refusal> {
        let Some(_held) = self.metrics.hold(self.hold.max_held) else {
            return Err(Refusal::NoPod(format!(
                "no pod is ready and {} requests already wait for one",
                self.hold.max_held
            )));
        };
        if self.pool.wait_for_pods(self.hold.timeout).await {
            return Ok(());
        }
        self.metrics.hold_timed_out();
        Err(Refusal::NoPod(format!("no pod became ready within {:?}", self.hold.timeout)))
    }
}

/// Reads a language-model request's body (up to [`KEY_BODY_LIMIT`]) for its affinity key, and
/// gives back a body that sends the same frames.
async fn read_key(path: &str, mut body: Incoming) -> Result<(RequestBody, Option<affinity::Keyed>), Refusal> {
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::Body(e.to_string()))?;
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        }
        frames.push(frame);
        if data.len() > KEY_BODY_LIMIT {
            let read = stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
            let rest = BodyStream::new(body.map_err(BoxError::from));
            return Ok((StreamBody::new(read.chain(rest)).boxed_unsync(), None));
        }
    }
    let key = affinity::key(path, &data);
    let read = stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
    Ok((StreamBody::new(read).boxed_unsync(), key))
}

/// `http://{pod}{path}`: HTTP/2 names the pod in `:authority`.
fn pod_uri(addr: SocketAddr, path: &str) -> Result<Uri, Refusal> {
    Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .map_err(|e| Refusal::Body(format!("the request's path cannot be forwarded: {e}")))
}

/// Removes the connection-specific headers HTTP/2 forbids (`te` survives as `trailers`, which
/// gRPC needs), and `host`, which `:authority` replaces.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the `connection` header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|name| name.trim().to_ascii_lowercase()))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::HOST,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    let trailers = headers.get(header::TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Refusal {
    /// The answer in the caller's protocol: a trailers-only gRPC status, or an HTTP status with a
    /// JSON error (OpenAI's shape under `/v1`, KServe's elsewhere).
    fn response(self, grpc: bool, openai: bool, hold: Duration) -> Response<ResponseBody> {
        let (status, code, message, retry) = match self {
            Refusal::NoPod(message) => (StatusCode::SERVICE_UNAVAILABLE, 14, message, true),
            Refusal::AllRefused => {
                (StatusCode::SERVICE_UNAVAILABLE, 14, "every ready pod refused the request".to_owned(), true)
            }
            Refusal::Failed(error) => (
                StatusCode::BAD_GATEWAY,
                14,
                format!("the connection to the pod failed while the request ran: {error}"),
                false,
            ),
            Refusal::Body(error) => (StatusCode::BAD_REQUEST, 3, format!("reading the request: {error}"), false),
            // The worker's own words for it.
            Refusal::UnknownModel(model) => {
                (StatusCode::NOT_FOUND, 5, format!("model {model:?} is not served here"), false)
            }
        };
        tracing::warn!(%status, %message, "the router answered the request itself");
        let mut response = if grpc {
            let mut response = Response::new(Full::new(Bytes::new()).map_err(BoxError::from).boxed_unsync());
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(code));
            if let Ok(message) = HeaderValue::from_str(&percent_encode(&message)) {
                headers.insert("grpc-message", message);
            }
            response
        } else {
            // The worker's error shapes: OpenAI's under `/v1`, KServe's elsewhere.
            let kind = match status {
                StatusCode::NOT_FOUND => "not_found_error",
                StatusCode::BAD_REQUEST => "invalid_request_error",
                _ => "server_error",
            };
            let body = match openai {
                true => serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
                false => serde_json::json!({"error": message}),
            };
            let mut response =
                Response::new(Full::new(Bytes::from(body.to_string())).map_err(BoxError::from).boxed_unsync());
            *response.status_mut() = status;
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        };
        if retry {
            let seconds = hold.as_secs().max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    message
        .bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A response body that keeps its request counted against the pod until it ends.
struct Tracked {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx).map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_pass_unchanged() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("host", "svc:8500"),
            ("te", "trailers"),
            ("x-lantern-routing-key", "user-7"),
            ("authorization", "Bearer k"),
            ("content-type", "application/grpc"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type", "te", "x-lantern-routing-key"]);
        assert!(is_grpc(&headers));
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut chunked);
        assert!(chunked.is_empty(), "only te: trailers may cross into HTTP/2");
    }

    #[test]
    fn refusals_answer_in_the_callers_protocol() {
        let grpc = Refusal::NoPod("no pod".into()).response(true, false, Duration::from_secs(30));
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()["retry-after"], "30");
        let http = Refusal::Failed("reset".into()).response(false, true, Duration::from_secs(30));
        assert_eq!(http.status(), StatusCode::BAD_GATEWAY);
        assert!(http.headers().get("retry-after").is_none(), "a request that may have run is not to be retried");
        assert_eq!(percent_encode("50% ok ü"), "50%25 ok %C3%BC");
    }
}
