"""Reads a GGUF file with llama.cpp's own reader (the `gguf` package) and prints what it found as
JSON: each tensor's type name and dimensions (row-major, as candle reports them) and the string
and integer metadata. runtime/tests/models.rs compares it with what it wrote."""
import json
import sys

from gguf import GGUFReader

reader = GGUFReader(sys.argv[1])
tensors = {
    t.name: {"type": t.tensor_type.name, "dims": [int(d) for d in reversed(t.shape.tolist())]}
    for t in reader.tensors
}
metadata = {}
for field in reader.fields.values():
    if field.name.startswith("GGUF."):
        continue
    value = field.contents()
    if isinstance(value, (str, int, float, bool)):
        metadata[field.name] = value
    elif isinstance(value, list):
        metadata[field.name] = len(value)
print(json.dumps({"tensors": tensors, "metadata": metadata}))
