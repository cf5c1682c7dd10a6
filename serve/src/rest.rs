//! The Open Inference Protocol v2 REST API under `/v2/...`, and `/metrics`. Same semantics and
//! error table as the gRPC service; errors are `{"error": "..."}` with the mapped HTTP status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dispatch;
use super::metrics::Metrics;
use super::routing::Target;
use super::signature::InferRequest;
use super::status;
use super::versions::ModelManager;
use super::{ROUTING_KEY_HEADER, SERVER_EXTENSIONS, SERVER_NAME};
use crate::error::{Error, Result};
use half::{bf16, f16};
use lantern_runtime::repository::TensorSpec;
use lantern_runtime::tensor::{DataType, Tensor, Values};

#[derive(Clone)]
struct AppState {
    manager: ModelManager,
    metrics: Arc<Metrics>,
}

/// The REST routes over `manager`.
pub fn router(manager: ModelManager, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(version_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(version_ready))
        .route("/v2/models/{model}/infer", post(model_infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(version_infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route("/v2/repository/models/{model}/unload", post(repository_unload))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { manager: manager.clone(), metrics })
        .merge(health_router(manager))
}

/// The health routes alone: what a connection beyond the server's cap is still answered.
pub fn health_router(manager: ModelManager) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(server_ready))
        .with_state(manager)
}

/// An error in this API's shape, `{"error": "..."}`, with `status`.
pub fn error_response(status: StatusCode, message: String) -> Response {
    ApiError(status, message).into_response()
}

/// The answer to a path outside `/v1` that no route serves.
pub fn not_found(method: &http::Method, path: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, format!("no route for {method} {path}"))
}

/// The answer to a route called with a method it does not take.
pub fn method_not_allowed(method: &http::Method, path: &str) -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, format!("{path} does not take {method}"))
}

/// An error answered as `{"error": "..."}` with the status from the shared table.
struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(status::http_status(status::grpc_code(&err)), err.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self(rejection.status(), format!("request body: {}", rejection.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

async fn server_ready(State(manager): State<ModelManager>) -> Response {
    let ready = manager.server_ready();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": ready}))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": SERVER_EXTENSIONS}))
}

async fn model_metadata(State(app): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    metadata(&app, model, "")
}

async fn version_metadata(
    State(app): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    metadata(&app, model, &version)
}

fn metadata(app: &AppState, model: String, version: &str) -> ApiResult<Json<Value>> {
    let metadata = app.manager.metadata(&model, &Target::parse(version)?)?;
    let spec = |s: &TensorSpec| json!({"name": s.name, "datatype": s.datatype, "shape": s.shape});
    Ok(Json(json!({
        "name": model,
        "versions": metadata.versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": super::platform(&metadata.manifest),
        "inputs": metadata.manifest.inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": metadata.manifest.outputs.iter().map(spec).collect::<Vec<_>>(),
    })))
}

async fn model_ready(State(app): State<AppState>, Path(model): Path<String>) -> ApiResult<Response> {
    ready(&app, model, "")
}

async fn version_ready(
    State(app): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    ready(&app, model, &version)
}

fn ready(app: &AppState, model: String, version: &str) -> ApiResult<Response> {
    let ready = app.manager.is_ready(&model, &Target::parse(version)?)?;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((code, Json(json!({"name": model, "ready": ready}))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(app): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body?;
    // The body is optional: an empty POST lists everything.
    let request: IndexRequest = if body.is_empty() {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")))?
    };
    let rows: Vec<Value> = app
        .manager
        .repository_index(request.ready)
        .into_iter()
        .map(|e| json!({"name": e.model, "version": e.version.to_string(), "state": e.state, "reason": e.reason}))
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn repository_load(State(app): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    app.manager.load_model(&model).await?;
    Ok(Json(json!({})))
}

async fn repository_unload(State(app): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    app.manager.unload_model(&model)?;
    Ok(Json(json!({})))
}

async fn metrics_text(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = lantern_telemetry::exposition::negotiate(accept, app.metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[derive(Debug, Deserialize)]
struct JsonInferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<JsonTensor>,
    #[serde(default)]
    outputs: Vec<JsonRequestedOutput>,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize, Serialize)]
struct JsonTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Absent where the tensor travels as binary data.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    data: Value,
    /// `binary_data_size`: the tensor's bytes follow the JSON header.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    parameters: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct JsonRequestedOutput {
    name: String,
    /// `binary_data: true` asks for the output as binary data.
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// The header of the binary tensor data extension: the JSON part's length; the tensors' bytes
/// follow it in the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The request parameter that asks for every output as binary data.
const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Which outputs a request wants as binary data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BinaryOutputs {
    all: bool,
    named: Vec<String>,
}

impl BinaryOutputs {
    fn wants(&self, name: &str) -> bool {
        self.all || self.named.iter().any(|n| n == name)
    }
}

async fn model_infer(
    State(app): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    infer(&app, model, "", &headers, body?).await
}

async fn version_infer(
    State(app): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    infer(&app, model, &version, &headers, body?).await
}

/// A decoded infer body: its `id`, the protocol-neutral request, and which outputs go back as
/// binary data.
pub type DecodedBody = (Option<String>, InferRequest, BinaryOutputs);

/// Decodes an infer body (`{"id", "inputs", "outputs", "parameters"}`) into the
/// protocol-neutral request, every tensor checked against its shape and datatype. With
/// `header_length` (the binary tensor data extension's header) the JSON is that many leading
/// bytes, and each input that declares `binary_data_size` takes that many of the bytes after
/// it, in order; the sizes must add up to exactly what follows.
pub fn decode_infer_body(body: &[u8], header_length: Option<usize>) -> Result<DecodedBody> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(length) if length <= body.len() => body.split_at(length),
        Some(length) => {
            return Err(Error::invalid(format!("{HEADER_LENGTH} is {length} but the body has {} bytes", body.len())));
        }
    };
    let mut body: JsonInferRequest =
        serde_json::from_slice(header).map_err(|e| Error::invalid(format!("invalid request body: {e}")))?;
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for input in body.inputs {
        let size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(size) => Some(size.as_u64().ok_or_else(|| {
                Error::invalid(format!("input {:?}: binary_data_size must be a byte count, got {size}", input.name))
            })?),
        };
        inputs.push(match size {
            None => tensor_from_json(input)?,
            Some(_) if header_length.is_none() => {
                return Err(Error::invalid(format!(
                    "input {:?} declares binary_data_size but the request has no {HEADER_LENGTH} header",
                    input.name
                )));
            }
            Some(size) => {
                let size = usize::try_from(size).ok().filter(|&s| s <= binary.len()).ok_or_else(|| {
                    Error::invalid(format!(
                        "input {:?} declares binary_data_size {size} but {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    ))
                })?;
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                tensor_from_binary(input, bytes)?
            }
        });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!("{} bytes of binary data belong to no input", binary.len())));
    }
    let all = match body.parameters.remove(BINARY_DATA_OUTPUT) {
        None => false,
        Some(Value::Bool(all)) => all,
        Some(other) => return Err(Error::invalid(format!("{BINARY_DATA_OUTPUT} must be a boolean, got {other}"))),
    };
    let named = body.outputs.iter().filter(|o| o.parameters.get("binary_data") == Some(&Value::Bool(true)));
    let binary_outputs = BinaryOutputs { all, named: named.map(|o| o.name.clone()).collect() };
    let outputs = body.outputs.into_iter().map(|o| o.name).collect();
    Ok((body.id, InferRequest { inputs, outputs, parameters: body.parameters }, binary_outputs))
}

/// The value of the binary data extension's header, if the request has one.
fn header_length(headers: &HeaderMap) -> Result<Option<usize>> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    let length = value.to_str().ok().and_then(|v| v.trim().parse().ok());
    length.map(Some).ok_or_else(|| Error::invalid(format!("{HEADER_LENGTH} must be a byte count, got {value:?}")))
}

/// [`decode_infer_body`] on the blocking pool: a body of many megabytes takes a while, and must
/// not hold up the runtime's threads (health checks included).
async fn parse_infer_body(body: Bytes, header_length: Option<usize>) -> ApiResult<DecodedBody> {
    let parsed = tokio::task::spawn_blocking(move || decode_infer_body(&body, header_length));
    Ok(parsed.await.map_err(|e| Error::Shutdown(format!("parsing the request body failed: {e}")))??)
}

async fn infer(app: &AppState, model: String, version: &str, headers: &HeaderMap, body: Bytes) -> ApiResult<Response> {
    let target = Target::parse(version)?;
    let routing_key = headers.get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok());
    let (id, request, binary_outputs) = parse_infer_body(body, header_length(headers)?).await?;
    let response = dispatch::infer(&app.manager, &model, &target, routing_key, request).await?;
    let mut binary = Vec::new();
    let outputs: Vec<JsonTensor> = response
        .outputs
        .into_iter()
        .map(|tensor| match binary_outputs.wants(&tensor.name) {
            true => {
                let bytes = tensor.to_raw();
                let parameters = serde_json::Map::from_iter([("binary_data_size".to_owned(), json!(bytes.len()))]);
                binary.extend(bytes);
                let datatype = tensor.datatype.as_str().into();
                JsonTensor { name: tensor.name, shape: tensor.shape, datatype, data: Value::Null, parameters }
            }
            false => tensor_to_json(tensor),
        })
        .collect();
    let mut answer = json!({"model_name": model, "model_version": response.version.to_string(), "outputs": outputs});
    if let Some(id) = id {
        answer["id"] = id.into();
    }
    if binary.is_empty() {
        return Ok(Json(answer).into_response());
    }
    let mut body = answer.to_string().into_bytes();
    let length = body.len();
    body.extend(binary);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (HEADER_LENGTH.parse().expect("a valid header name"), length.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A tensor whose values came as binary data: little-endian, row-major, BYTES elements each
/// after its 4-byte length (the same layout as gRPC's `raw_input_contents`).
fn tensor_from_binary(tensor: JsonTensor, bytes: &[u8]) -> Result<Tensor> {
    let name = tensor.name;
    let datatype: DataType = tensor
        .datatype
        .parse()
        .map_err(|_| Error::invalid(format!("input {name:?} has unknown datatype {:?}", tensor.datatype)))?;
    if !tensor.data.is_null() {
        return Err(Error::invalid(format!("input {name:?} has both data and binary_data_size; send one")));
    }
    let values = lantern_runtime::tensor::decode_raw(&name, datatype, &tensor.shape, bytes)?;
    Ok(Tensor::new(name, datatype, tensor.shape, values)?)
}

/// Parses a JSON tensor; `data` may be flat or nested row-major.
fn tensor_from_json(tensor: JsonTensor) -> Result<Tensor> {
    let name = tensor.name;
    let datatype: DataType = tensor
        .datatype
        .parse()
        .map_err(|_| Error::invalid(format!("input {name:?} has unknown datatype {:?}", tensor.datatype)))?;
    let mut flat = Vec::new();
    flatten(&tensor.data, &mut flat);
    let bad = |v: &Value| Error::invalid(format!("input {name:?}: {v} is not a valid {datatype} value"));
    let ints = |min: i64, max: i64| -> Result<Values> {
        flat.iter()
            .map(|v| v.as_i64().filter(|x| (min..=max).contains(x)).ok_or_else(|| bad(v)))
            .collect::<Result<_>>()
            .map(Values::Int)
    };
    let uints = |max: u64| -> Result<Values> {
        flat.iter()
            .map(|v| v.as_u64().filter(|&x| x <= max).ok_or_else(|| bad(v)))
            .collect::<Result<_>>()
            .map(Values::UInt)
    };
    let values = match datatype {
        DataType::Bool => Values::Bool(flat.iter().map(|v| v.as_bool().ok_or_else(|| bad(v))).collect::<Result<_>>()?),
        DataType::I8 => ints(i8::MIN.into(), i8::MAX.into())?,
        DataType::I16 => ints(i16::MIN.into(), i16::MAX.into())?,
        DataType::I32 => ints(i32::MIN.into(), i32::MAX.into())?,
        DataType::I64 => ints(i64::MIN, i64::MAX)?,
        DataType::U8 => uints(u8::MAX.into())?,
        DataType::U16 => uints(u16::MAX.into())?,
        DataType::U32 => uints(u32::MAX.into())?,
        DataType::U64 => uints(u64::MAX)?,
        // JSON numbers are decimal text: FP32, FP16 and BF16 take the nearest value of their type;
        // a number beyond the type's range is refused, not turned into infinity.
        DataType::F16 | DataType::BF16 | DataType::F32 => {
            let narrow = |x: f64| match datatype {
                DataType::F16 => f16::from_f64(x).to_f32(),
                DataType::BF16 => bf16::from_f64(x).to_f32(),
                _ => x as f32,
            };
            Values::F32(
                flat.iter()
                    .map(|v| v.as_f64().map(narrow).filter(|x| x.is_finite()).ok_or_else(|| bad(v)))
                    .collect::<Result<_>>()?,
            )
        }
        DataType::F64 => Values::F64(flat.iter().map(|v| v.as_f64().ok_or_else(|| bad(v))).collect::<Result<_>>()?),
        DataType::Bytes => Values::Bytes(
            flat.iter()
                .map(|v| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| bad(v)))
                .collect::<Result<_>>()?,
        ),
    };
    Ok(Tensor::new(name, datatype, tensor.shape, values)?)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

fn tensor_to_json(tensor: Tensor) -> JsonTensor {
    let data = match tensor.values {
        Values::Bool(v) => json!(v),
        Values::Int(v) => json!(v),
        Values::UInt(v) => json!(v),
        Values::F32(v) => json!(v),
        Values::F64(v) => json!(v),
        Values::Bytes(v) => json!(v.iter().map(|b| String::from_utf8_lossy(b)).collect::<Vec<_>>()),
    };
    let datatype = tensor.datatype.as_str().into();
    JsonTensor { name: tensor.name, shape: tensor.shape, datatype, data, parameters: Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(datatype: &str, shape: Vec<i64>, data: Value) -> Result<Tensor> {
        tensor_from_json(JsonTensor {
            name: "x".into(),
            shape,
            datatype: datatype.into(),
            data,
            parameters: Default::default(),
        })
    }

    #[test]
    fn binary_inputs_take_their_declared_bytes_in_order_and_the_sizes_must_add_up() {
        let header = json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1], "datatype": "INT32", "data": [7]},
                {"name": "c", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}],
            "parameters": {"binary_data_output": false, "temperature": 0.5},
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(1.5f32.to_le_bytes());
        body.extend((-2.0f32).to_le_bytes());
        body.extend(2u32.to_le_bytes());
        body.extend(b"hi");
        let (_, request, binary) = decode_infer_body(&body, Some(header.len())).unwrap();
        assert_eq!(request.inputs[0].values, Values::F32(vec![1.5, -2.0]));
        assert_eq!(request.inputs[1].values, Values::Int(vec![7]));
        assert_eq!(request.inputs[2].values, Values::Bytes(vec![b"hi".to_vec()]));
        assert!(binary.wants("y") && !binary.wants("z"));
        assert!(!request.parameters.contains_key(BINARY_DATA_OUTPUT) && request.parameters.contains_key("temperature"));

        let refused = |body: &[u8], length: Option<usize>| decode_infer_body(body, length).unwrap_err().to_string();
        assert!(refused(&body[..body.len() - 1], Some(header.len())).contains("binary_data_size 6 but 5 bytes"));
        let mut longer = body.clone();
        longer.push(0);
        assert!(refused(&longer, Some(header.len())).contains("1 bytes of binary data belong to no input"));
        assert!(refused(&body, Some(body.len() + 1)).contains("but the body has"));
        assert!(refused(header.as_bytes(), None).contains("no inference-header-content-length header"));
    }

    #[test]
    fn nested_and_flat_data_parse_alike() {
        let nested = parse("FP32", vec![2, 2], json!([[1, 2], [3, 4.5]])).unwrap();
        let flat = parse("FP32", vec![2, 2], json!([1, 2, 3, 4.5])).unwrap();
        assert_eq!(nested, flat);
        assert_eq!(flat.values, Values::F32(vec![1.0, 2.0, 3.0, 4.5]));
    }

    #[test]
    fn values_of_the_wrong_type_or_range_are_refused() {
        assert!(parse("INT8", vec![1], json!([200])).unwrap_err().to_string().contains("200"));
        assert!(parse("FP32", vec![1], json!(["a"])).unwrap_err().to_string().contains("FP32"));
        assert!(parse("FP32", vec![1], json!([1e300])).unwrap_err().to_string().contains("valid FP32"));
        assert!(parse("FP16", vec![1], json!([70000])).unwrap_err().to_string().contains("FP16"));
        assert_eq!(
            parse("FP16", vec![1], json!([0.1])).unwrap().values,
            Values::F32(vec![f16::from_f64(0.1).to_f32()])
        );
        assert!(parse("BOOL", vec![1], json!([1])).is_err());
        assert!(parse("FP32", vec![3], json!([1, 2])).unwrap_err().to_string().contains("3 elements"));
        assert_eq!(parse("BYTES", vec![1], json!(["hi"])).unwrap().values, Values::Bytes(vec![b"hi".to_vec()]));
    }
}
