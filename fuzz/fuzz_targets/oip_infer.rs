//! The OIP gRPC decoder: any bytes as a `ModelInferRequest`, translated to tensors, converted to
//! FP32 and back to raw form, as `ModelInfer` does before and after routing.
#![no_main]

use lantern_proto::inference::ModelInferRequest;
use lantern_serve::oip::request_from_proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(data) else { return };
    if let Ok(request) = request_from_proto(request) {
        for tensor in &request.inputs {
            let _ = tensor.to_f32_lossless();
            let _ = tensor.to_raw();
        }
    }
});
