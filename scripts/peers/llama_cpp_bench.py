"""llama.cpp's figures on the same GGUF, for comparison with `bench --sections llm`.

Usage: llama_cpp_bench.py MODEL.gguf THREADS. Prints prefill tokens/s for a 256-token prompt
(median of 3) and single-stream greedy decode tokens/s for 128 tokens, measured the way Lantern's
bench measures them (prompt text and token counts alike).
"""
import statistics
import sys
import time

from llama_cpp import Llama

path, threads = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. " * 40
ids = llm.tokenize(text.encode(), add_bos=False, special=False)

rates = []
for _ in range(3):
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids[:256])
    rates.append(256 / (time.perf_counter() - started))
print(f"llama.cpp prefill, 256-token prompt: {statistics.median(rates):.1f} tokens/s (median of 3)")

llm.reset()
first, count = None, 0
for token in llm.generate(ids[:16], temp=0.0, reset=True):
    count += 1
    if first is None:
        first = time.perf_counter()
    if count == 128:
        break
print(f"llama.cpp decode, 1 stream: {(count - 1) / (time.perf_counter() - first):.1f} tokens/s ({count} tokens)")
