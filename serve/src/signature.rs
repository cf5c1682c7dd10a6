//! Checks an inference request against a version's signature (the manifest's inputs and outputs)
//! and turns its input into the `f32` rows a tensor model consumes. Pure: every error is an
//! `INVALID_ARGUMENT` that names the tensor and what was expected.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use lantern_runtime::repository::{Manifest, TensorSpec};
use lantern_runtime::tensor::{DataType, Tensor, Values};

/// A request in protocol-neutral form.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
    /// Names of the outputs to return; empty returns all.
    pub outputs: Vec<String>,
    /// Request parameters (generation options for a language model).
    pub parameters: BTreeMap<String, serde_json::Value>,
}

/// The single input of a tensor model, checked and flattened.
#[derive(Debug)]
pub struct Rows {
    pub rows: usize,
    pub values: Vec<f32>,
}

/// Width of one row of `spec`: the product of every dimension after the batch dimension.
pub fn row_width(spec: &TensorSpec) -> Option<usize> {
    spec.shape.iter().skip(1).try_fold(1usize, |acc, &d| usize::try_from(d).ok().filter(|&d| d > 0).map(|d| acc * d))
}

/// Validates `request` against `manifest` and extracts the input rows.
pub fn prepare(manifest: &Manifest, request: &InferRequest) -> Result<Rows> {
    let [spec] = manifest.inputs.as_slice() else {
        return Err(Error::invalid(format!(
            "this model has {} inputs; only single-input models are served",
            manifest.inputs.len()
        )));
    };
    check_requested_outputs(manifest, &request.outputs)?;
    let tensor = match request.inputs.as_slice() {
        [tensor] if tensor.name == spec.name => tensor,
        [] => return Err(Error::invalid(format!("missing input {:?}", spec.name))),
        inputs => {
            let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::invalid(format!("the model takes exactly one input {:?}, got {names:?}", spec.name)));
        }
    };
    check_shape(spec, tensor)?;
    if !converts_to(tensor.datatype, spec.datatype) {
        return Err(Error::invalid(format!(
            "input {:?} has datatype {}, the model expects {}",
            tensor.name, tensor.datatype, spec.datatype
        )));
    }
    let rows = usize::try_from(tensor.shape[0]).expect("check_shape rejects negative dimensions; this is a bug");
    if rows == 0 {
        return Err(Error::invalid(format!("input {:?} has no rows", tensor.name)));
    }
    Ok(Rows { rows, values: tensor.to_f32_lossless()? })
}

/// The UTF-8 texts of a text model's single BYTES input, checked against `manifest`.
pub fn texts(manifest: &Manifest, request: &InferRequest) -> Result<Vec<String>> {
    let spec = &manifest.inputs[0];
    check_requested_outputs(manifest, &request.outputs)?;
    let tensor = match request.inputs.as_slice() {
        [tensor] if tensor.name == spec.name => tensor,
        _ => return Err(Error::invalid(format!("this model takes exactly one input {:?} (BYTES)", spec.name))),
    };
    let Values::Bytes(items) = &tensor.values else {
        return Err(Error::invalid(format!("input {:?} must be BYTES, got {}", spec.name, tensor.datatype)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes.clone())
                .map_err(|e| Error::invalid(format!("element {i} of input {:?} is not valid UTF-8: {e}", spec.name)))
        })
        .collect()
}

/// Keeps the outputs the request asked for (all when it named none).
pub fn select_outputs(requested: &[String], outputs: Vec<Tensor>) -> Vec<Tensor> {
    if requested.is_empty() {
        return outputs;
    }
    outputs.into_iter().filter(|t| requested.contains(&t.name)).collect()
}

fn check_requested_outputs(manifest: &Manifest, requested: &[String]) -> Result<()> {
    for name in requested {
        if !manifest.outputs.iter().any(|o| &o.name == name) {
            let known: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Error::invalid(format!("unknown output {name:?}; the model has {known:?}")));
        }
    }
    Ok(())
}

fn check_shape(spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
    let fits = tensor.shape.len() == spec.shape.len()
        && tensor.shape.iter().zip(&spec.shape).all(|(&got, &want)| got >= 0 && (want == -1 || got == want));
    if fits {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "input {:?} has shape {:?}, the model expects {:?}",
            tensor.name, tensor.shape, spec.shape
        )))
    }
}

/// Whether `from` converts to `to` without a datatype error (values are checked later).
fn converts_to(from: DataType, to: DataType) -> bool {
    use DataType::*;
    from == to || (to == F32 && matches!(from, F16 | BF16 | F64 | I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lantern_runtime::model::mlp::{Activation, Config};
    use lantern_runtime::tensor::Values;

    fn manifest() -> Manifest {
        Config { layers: vec![3, 2], activation: Activation::Relu }.manifest_spec()
    }

    fn request(tensor: Tensor) -> InferRequest {
        InferRequest { inputs: vec![tensor], ..InferRequest::default() }
    }

    #[test]
    fn a_matching_request_yields_rows() {
        let rows = prepare(&manifest(), &request(Tensor::f32("input", vec![2, 3], vec![1.0; 6]))).unwrap();
        assert_eq!(rows.rows, 2);
        assert_eq!(rows.values.len(), 6);
    }

    #[test]
    fn integer_and_double_inputs_convert_losslessly() {
        let ints = Tensor::new("input".into(), DataType::I64, vec![1, 3], Values::Int(vec![1, 2, 3])).unwrap();
        assert_eq!(prepare(&manifest(), &request(ints)).unwrap().values, vec![1.0, 2.0, 3.0]);
        let doubles = Tensor::new("input".into(), DataType::F64, vec![1, 3], Values::F64(vec![0.1, 0.2, 0.3])).unwrap();
        assert!(prepare(&manifest(), &request(doubles)).unwrap_err().to_string().contains("without loss"));
    }

    #[test]
    fn wrong_requests_name_the_problem() {
        let m = manifest();
        let cases = [
            (request(Tensor::f32("x", vec![1, 3], vec![0.0; 3])), "\"input\""),
            (request(Tensor::f32("input", vec![1, 4], vec![0.0; 4])), "shape [1, 4]"),
            (request(Tensor::f32("input", vec![3], vec![0.0; 3])), "expects [-1, 3]"),
            (request(Tensor::f32("input", vec![0, 3], vec![])), "no rows"),
            (
                request(Tensor::new("input".into(), DataType::Bool, vec![1, 3], Values::Bool(vec![true; 3])).unwrap()),
                "datatype BOOL",
            ),
            (InferRequest::default(), "missing input"),
            (
                InferRequest {
                    outputs: vec!["logits".into()],
                    ..request(Tensor::f32("input", vec![1, 3], vec![0.0; 3]))
                },
                "unknown output \"logits\"",
            ),
        ];
        for (req, needle) in cases {
            let err = prepare(&m, &req).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn row_width_multiplies_fixed_dimensions() {
        let spec = |shape: Vec<i64>| TensorSpec { name: "x".into(), datatype: DataType::F32, shape };
        assert_eq!(row_width(&spec(vec![-1, 4])), Some(4));
        assert_eq!(row_width(&spec(vec![-1, 2, 3])), Some(6));
        assert_eq!(row_width(&spec(vec![-1, -1])), None);
    }
}
