"""Drives a Lantern worker with the stock tritonclient gRPC client; exits non-zero on any mismatch.

Usage: tritonclient_check.py HOST:PORT  (model "m" version 1 must be an MLP with 4 inputs, 3 outputs)
"""
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(sys.argv[1])
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m")
assert client.get_server_metadata().name == "lantern"
metadata = client.get_model_metadata("m")
assert list(metadata.versions) == ["1"], metadata
assert list(metadata.inputs[0].shape) == [-1, 4], metadata

x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
fp32 = grpcclient.InferInput("input", list(x.shape), "FP32")
fp32.set_data_from_numpy(x)
result = client.infer("m", [fp32], request_id="py-1", outputs=[grpcclient.InferRequestedOutput("output")])
assert result.get_response().id == "py-1"
assert result.get_response().model_version == "1"
out = result.as_numpy("output")
assert out.shape == (2, 3) and out.dtype == np.float32, out

fp16 = grpcclient.InferInput("input", list(x.shape), "FP16")
fp16.set_data_from_numpy(x.astype(np.float16))
assert np.allclose(client.infer("m", [fp16]).as_numpy("output"), out, atol=1e-2)

try:
    client.infer("nope", [fp32])
    sys.exit("inference on an unknown model succeeded")
except InferenceServerException as e:
    assert "NOT_FOUND" in str(e.status()), e.status()

index = client.get_model_repository_index()
assert [(m.name, m.version, m.state) for m in index.models] == [("m", "1", "READY")], index
np.savetxt(sys.stdout, out)
