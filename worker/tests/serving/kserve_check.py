"""Talks to a Lantern worker through the stock KServe Python SDK: its REST client (binary tensor
data, the SDK's default, in and out, and plain JSON) and its gRPC client (which sends a number it
cannot type, such as a temperature, as a string parameter).

Usage: kserve_check.py HOST:PORT MLP LLM. MLP takes FP32 "input" [-1, 4] and answers "output";
LLM takes BYTES "text_input". Prints one JSON object of what the SDK parsed.
"""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main():
    address, mlp, llm = sys.argv[1:4]
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=60))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10

    binary = InferInput("input", [2, 4], "FP32")
    binary.set_data_from_numpy(x)  # binary_data=True: the SDK's default
    request = InferRequest(
        model_name=mlp, infer_inputs=[binary], request_outputs=[RequestedOutput("output", {"binary_data": True})])
    headers = {}
    binary_answer = await rest.infer(f"http://{address}", request, model_name=mlp, response_headers=headers)

    plain = InferInput("input", [2, 4], "FP32")
    plain.set_data_from_numpy(x, binary_data=False)
    json_answer = await rest.infer(f"http://{address}", InferRequest(model_name=mlp, infer_inputs=[plain]), model_name=mlp)

    text = InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"The sky is"], dtype=np.object_))
    grpc = InferenceGRPCClient(address, timeout=120)
    params = {"temperature": "0.0", "max_tokens": 4}
    llm_answer = await grpc.infer(InferRequest(model_name=llm, infer_inputs=[text], parameters=params))
    rest_text = InferInput("text_input", [1], "BYTES")
    rest_text.set_data_from_numpy(np.array([b"The sky is"], dtype=np.object_))
    rest_llm = await rest.infer(
        f"http://{address}", InferRequest(model_name=llm, infer_inputs=[rest_text], parameters=params), model_name=llm)

    print(json.dumps({
        "binary": binary_answer.outputs[0].as_numpy().tolist(),
        "binary_header": headers.get("inference-header-content-length"),
        "json": json_answer.outputs[0].as_numpy().tolist(),
        "grpc_text": [t.decode() if isinstance(t, bytes) else t for t in llm_answer.outputs[0].as_numpy().tolist()],
        "rest_text": [t.decode() if isinstance(t, bytes) else t for t in rest_llm.outputs[0].as_numpy().tolist()],
    }))


asyncio.run(main())
