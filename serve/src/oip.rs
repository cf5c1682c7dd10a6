//! The Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`) with Triton's
//! repository extension. This module only translates between protobuf and the manager's types.

use lantern_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use lantern_proto::inference::infer_parameter::ParameterChoice;
use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::model_infer_response::InferOutputTensor;
use lantern_proto::inference::model_metadata_response::TensorMetadata;
use lantern_proto::inference::repository_index_response::ModelIndex;
use lantern_proto::inference::{self as pb, InferTensorContents};
use tonic::{Request, Response, Status};

use super::dispatch;
use super::routing::Target;
use super::signature::InferRequest;
use super::versions::{ModelManager, ModelMetadata};
use super::{ROUTING_KEY_HEADER, ROUTING_KEY_PARAMETER, SERVER_EXTENSIONS, SERVER_NAME};
use crate::error::{Error, Result};
use lantern_runtime::repository::TensorSpec;
use lantern_runtime::tensor::{self, DataType, Tensor, Values};

/// The OIP v2 gRPC service over a [`ModelManager`].
#[derive(Clone)]
pub struct InferenceService {
    manager: ModelManager,
}

impl InferenceService {
    /// Serves `manager`'s models.
    pub fn new(manager: ModelManager) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.manager.server_ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = self.manager.is_ready(&request.name, &Target::parse(&request.version)?)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: SERVER_EXTENSIONS.iter().map(|&e| e.into()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let metadata = self.manager.metadata(&request.name, &Target::parse(&request.version)?)?;
        Ok(Response::new(metadata_to_proto(request.name, &metadata)))
    }

    #[tracing::instrument(skip_all, fields(model = %request.get_ref().model_name, version = %request.get_ref().model_version))]
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let header_key = request.metadata().get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request = request.into_inner();
        let target = Target::parse(&request.model_version)?;
        let routing_key = routing_key(&request).or(header_key);
        let raw = !request.raw_input_contents.is_empty();
        let (model, id) = (request.model_name.clone(), request.id.clone());
        let infer = request_from_proto(request)?;
        let response = dispatch::infer(&self.manager, &model, &target, routing_key.as_deref(), infer).await?;
        Ok(Response::new(response_to_proto(model, id, response.version, response.outputs, raw)))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let models = self
            .manager
            .repository_index(request.into_inner().ready)
            .into_iter()
            .map(|entry| ModelIndex {
                name: entry.model,
                version: entry.version.to_string(),
                state: entry.state.into(),
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.manager.load_model(&request.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.manager.unload_model(&request.into_inner().model_name)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

fn routing_key(request: &pb::ModelInferRequest) -> Option<String> {
    match request.parameters.get(ROUTING_KEY_PARAMETER)?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(key) => Some(key.clone()),
        ParameterChoice::Int64Param(key) => Some(key.to_string()),
        ParameterChoice::Uint64Param(key) => Some(key.to_string()),
        _ => None,
    }
}

/// Translates a `ModelInferRequest`'s tensors, typed or raw (never both).
pub fn request_from_proto(request: pb::ModelInferRequest) -> Result<InferRequest> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() {
        if let Some(typed) = request.inputs.iter().find(|i| i.contents.as_ref().is_some_and(has_values)) {
            return Err(Error::invalid(format!(
                "input {:?} sets contents while raw_input_contents is used; send one or the other",
                typed.name
            )));
        }
        if raw.len() != request.inputs.len() {
            return Err(Error::invalid(format!(
                "raw_input_contents has {} entries for {} inputs; send one per input, in order",
                raw.len(),
                request.inputs.len()
            )));
        }
    }
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| input_from_proto(input, raw.get(i).map(|b| b.as_ref())))
        .collect::<Result<_>>()?;
    let parameters = request.parameters.into_iter().filter_map(|(k, v)| Some((k, parameter_value(v)?))).collect();
    Ok(InferRequest { inputs, outputs: request.outputs.into_iter().map(|o| o.name).collect(), parameters })
}

/// An OIP parameter as a JSON value, the form request parameters are read in.
fn parameter_value(parameter: pb::InferParameter) -> Option<serde_json::Value> {
    Some(match parameter.parameter_choice? {
        ParameterChoice::BoolParam(v) => v.into(),
        ParameterChoice::Int64Param(v) => v.into(),
        ParameterChoice::StringParam(v) => v.into(),
        ParameterChoice::DoubleParam(v) => v.into(),
        ParameterChoice::Uint64Param(v) => v.into(),
    })
}

fn input_from_proto(input: InferInputTensor, raw: Option<&[u8]>) -> Result<Tensor> {
    let datatype: DataType = input
        .datatype
        .parse()
        .map_err(|_| Error::invalid(format!("input {:?} has unknown datatype {:?}", input.name, input.datatype)))?;
    let values = match raw {
        Some(bytes) => tensor::decode_raw(&input.name, datatype, &input.shape, bytes)?,
        None => typed_values(&input.name, datatype, input.contents.unwrap_or_default())?,
    };
    Ok(Tensor::new(input.name, datatype, input.shape, values)?)
}

fn has_values(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Takes the contents field that `datatype` travels in; values outside a narrower integer
/// type's range are refused.
fn typed_values(name: &str, datatype: DataType, c: InferTensorContents) -> Result<Values> {
    let ranged = |values: Vec<i64>, min: i64, max: i64| -> Result<Values> {
        match values.iter().find(|&&v| v < min || v > max) {
            Some(v) => Err(Error::invalid(format!("input {name:?}: value {v} is out of range for {datatype}"))),
            None => Ok(Values::Int(values)),
        }
    };
    let uranged = |values: Vec<u64>, max: u64| -> Result<Values> {
        match values.iter().find(|&&v| v > max) {
            Some(v) => Err(Error::invalid(format!("input {name:?}: value {v} is out of range for {datatype}"))),
            None => Ok(Values::UInt(values)),
        }
    };
    let field = match datatype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::F16 | DataType::BF16 => {
            return Err(Error::invalid(format!("input {name:?}: {datatype} travels only in raw_input_contents")));
        }
    };
    let ints = |v: &[i32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
    let uints = |v: &[u32]| v.iter().map(|&x| u64::from(x)).collect::<Vec<_>>();
    let expected_len = [
        (c.bool_contents.len(), "bool_contents"),
        (c.int_contents.len(), "int_contents"),
        (c.int64_contents.len(), "int64_contents"),
        (c.uint_contents.len(), "uint_contents"),
        (c.uint64_contents.len(), "uint64_contents"),
        (c.fp32_contents.len(), "fp32_contents"),
        (c.fp64_contents.len(), "fp64_contents"),
        (c.bytes_contents.len(), "bytes_contents"),
    ];
    if let Some((_, other)) = expected_len.iter().find(|&&(len, f)| len > 0 && f != field) {
        return Err(Error::invalid(format!("input {name:?}: {datatype} data belongs in {field}, not {other}")));
    }
    Ok(match datatype {
        DataType::Bool => Values::Bool(c.bool_contents),
        DataType::I8 => ranged(ints(&c.int_contents), i8::MIN.into(), i8::MAX.into())?,
        DataType::I16 => ranged(ints(&c.int_contents), i16::MIN.into(), i16::MAX.into())?,
        DataType::I32 => Values::Int(ints(&c.int_contents)),
        DataType::I64 => Values::Int(c.int64_contents),
        DataType::U8 => uranged(uints(&c.uint_contents), u8::MAX.into())?,
        DataType::U16 => uranged(uints(&c.uint_contents), u16::MAX.into())?,
        DataType::U32 => Values::UInt(uints(&c.uint_contents)),
        DataType::U64 => Values::UInt(c.uint64_contents),
        DataType::F32 => Values::F32(c.fp32_contents),
        DataType::F64 => Values::F64(c.fp64_contents),
        DataType::Bytes => Values::Bytes(c.bytes_contents),
        DataType::F16 | DataType::BF16 => unreachable!("handled above"),
    })
}

/// Builds a `ModelInferResponse`; `raw` answers in `raw_output_contents` as the client asked.
pub fn response_to_proto(
    model: String,
    id: String,
    version: u64,
    outputs: Vec<Tensor>,
    raw: bool,
) -> pb::ModelInferResponse {
    let mut response =
        pb::ModelInferResponse { model_name: model, model_version: version.to_string(), id, ..Default::default() };
    for tensor in outputs {
        let contents = if raw {
            response.raw_output_contents.push(tensor.to_raw());
            None
        } else {
            Some(typed_contents(tensor.values))
        };
        response.outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.as_str().into(),
            shape: tensor.shape,
            parameters: Default::default(),
            contents,
        });
    }
    response
}

fn typed_contents(values: Values) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match values {
        Values::Bool(v) => c.bool_contents = v,
        Values::Int(v) => c.int64_contents = v,
        Values::UInt(v) => c.uint64_contents = v,
        Values::F32(v) => c.fp32_contents = v,
        Values::F64(v) => c.fp64_contents = v,
        Values::Bytes(v) => c.bytes_contents = v,
    }
    c
}

fn metadata_to_proto(name: String, metadata: &ModelMetadata) -> pb::ModelMetadataResponse {
    let spec = |s: &TensorSpec| TensorMetadata {
        name: s.name.clone(),
        datatype: s.datatype.as_str().into(),
        shape: s.shape.clone(),
    };
    pb::ModelMetadataResponse {
        name,
        versions: metadata.versions.iter().map(u64::to_string).collect(),
        platform: super::platform(&metadata.manifest),
        inputs: metadata.manifest.inputs.iter().map(spec).collect(),
        outputs: metadata.manifest.outputs.iter().map(spec).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_and_raw_inputs_decode_to_the_same_tensor() {
        let values = vec![1.0f32, 2.0, 3.0, 4.0];
        let typed = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![2, 2],
                Some(InferTensorContents { fp32_contents: values.clone(), ..Default::default() }),
            )],
            ..Default::default()
        };
        let raw = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![2, 2], None)],
            raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        };
        assert_eq!(request_from_proto(typed).unwrap().inputs, request_from_proto(raw).unwrap().inputs);
    }

    #[test]
    fn raw_and_typed_together_are_refused() {
        let request = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![1],
                Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }),
            )],
            raw_input_contents: vec![1f32.to_le_bytes().to_vec()],
            ..Default::default()
        };
        assert!(request_from_proto(request).unwrap_err().to_string().contains("one or the other"));
    }

    #[test]
    fn data_in_the_wrong_field_or_range_is_refused() {
        let wrong_field = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![1],
                Some(InferTensorContents { fp64_contents: vec![1.0], ..Default::default() }),
            )],
            ..Default::default()
        };
        assert!(request_from_proto(wrong_field).unwrap_err().to_string().contains("fp32_contents"));
        let out_of_range = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "INT8",
                vec![1],
                Some(InferTensorContents { int_contents: vec![300], ..Default::default() }),
            )],
            ..Default::default()
        };
        assert!(request_from_proto(out_of_range).unwrap_err().to_string().contains("out of range"));
        let unknown =
            pb::ModelInferRequest { inputs: vec![input("x", "FLOAT32", vec![1], None)], ..Default::default() };
        assert!(request_from_proto(unknown).unwrap_err().to_string().contains("FLOAT32"));
    }

    #[test]
    fn responses_answer_in_the_form_asked() {
        let out = vec![Tensor::f32("y", vec![1, 2], vec![0.5, 1.5])];
        let typed = response_to_proto("m".into(), "req-1".into(), 3, out.clone(), false);
        assert_eq!(typed.id, "req-1");
        assert_eq!(typed.model_version, "3");
        assert_eq!(typed.outputs[0].contents.as_ref().unwrap().fp32_contents, vec![0.5, 1.5]);
        let raw = response_to_proto("m".into(), String::new(), 3, out, true);
        assert!(raw.outputs[0].contents.is_none());
        assert_eq!(raw.raw_output_contents[0].len(), 8);
    }
}
