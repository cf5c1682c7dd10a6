//! The OIP REST decoder: any bytes as a `/v2/models/{m}/infer` body.
#![no_main]

use lantern_serve::rest::decode_infer_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, request)) = decode_infer_body(data) {
        for tensor in &request.inputs {
            let _ = tensor.to_f32_lossless();
        }
    }
});
