"""llama.cpp's figures on the same GGUF, for comparison with `bench --sections llm`.

Usage: llama_cpp_bench.py MODEL.gguf THREADS [single]. Prints prefill tokens/s for a 256-token prompt
(median of 3), single-stream greedy decode tokens/s for 128 tokens, and batched greedy decode
with 1, 4, 8 and 16 sequences: every sequence's 16-token prompt in one `llama_decode` batch, then one
batch per step holding each sequence's next token, 128 tokens per sequence, total output tokens
over the wall time (prompts included), as Lantern's bench counts its concurrent streams. The
batched figure uses llama-cpp-python's low-level API (`llama_batch_init`, `llama_decode`,
`llama_get_logits_ith`), since its `Llama` class decodes one sequence. With `single`, only
prefill and the single stream (the compression figures, per quantized file).
"""
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama
from llama_cpp import llama_cpp as ll

PROMPT_TOKENS = 256
SHORT_PROMPT_TOKENS = 16
NEW_TOKENS = 128

path, threads = sys.argv[1], int(sys.argv[2])
single_only = sys.argv[3:] == ["single"]
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. " * 40
ids = llm.tokenize(text.encode(), add_bos=False, special=False)

rates = []
for _ in range(3):
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids[:PROMPT_TOKENS])
    rates.append(PROMPT_TOKENS / (time.perf_counter() - started))
print(f"llama.cpp prefill, {PROMPT_TOKENS}-token prompt: {statistics.median(rates):.1f} tokens/s (median of 3)")

llm.reset()
first, count = None, 0
for token in llm.generate(ids[:SHORT_PROMPT_TOKENS], temp=0.0, reset=True):
    count += 1
    if first is None:
        first = time.perf_counter()
    if count == NEW_TOKENS:
        break
single = (count - 1) / (time.perf_counter() - first)
print(f"llama.cpp decode, 1 stream: {single:.1f} tokens/s ({count} tokens)")


def short_prompt(index):
    """A different 16-token prompt per sequence, cut as Lantern's bench cuts them."""
    start = index * SHORT_PROMPT_TOKENS + index % 7
    return ids[start:start + SHORT_PROMPT_TOKENS]


def batched(sequences):
    """Total output tokens/s of `sequences` greedy sequences decoded in shared batches."""
    params = ll.llama_context_default_params()
    # Each sequence gets n_ctx / n_seq_max cells: room for its prompt and its new tokens.
    params.n_ctx = sequences * 256
    params.n_batch = params.n_ubatch = max(512, sequences * SHORT_PROMPT_TOKENS)
    params.n_seq_max = sequences
    params.n_threads = params.n_threads_batch = threads
    ctx = ll.llama_init_from_model(llm.model, params)
    vocab = llm.n_vocab()
    batch = ll.llama_batch_init(sequences * SHORT_PROMPT_TOKENS, 0, 1)

    def fill(entries):
        """entries: (token, position, sequence, wants logits); returns each logits row's index."""
        batch.n_tokens = len(entries)
        rows = []
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = logits
            if logits:
                rows.append(i)
        if ll.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return rows

    def greedy(row):
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, row), shape=(vocab,))
        return int(np.argmax(logits))

    started = time.perf_counter()
    prompts = [short_prompt(s) for s in range(sequences)]
    entries = [
        (token, p, s, p == len(prompt) - 1) for s, prompt in enumerate(prompts) for p, token in enumerate(prompt)
    ]
    next_tokens = [greedy(row) for row in fill(entries)]
    produced = sequences
    for step in range(1, NEW_TOKENS):
        position = SHORT_PROMPT_TOKENS + step - 1
        rows = fill([(token, position, s, True) for s, token in enumerate(next_tokens)])
        next_tokens = [greedy(row) for row in rows]
        produced += sequences
    wall = time.perf_counter() - started
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    return produced / wall


for sequences in () if single_only else (1, 4, 8, 16):
    rate = batched(sequences)
    print(
        f"llama.cpp batched decode, {sequences:>2} sequence(s) x {NEW_TOKENS} tokens: {rate:.1f} tokens/s in total "
        f"({rate / single:.2f}x its 1 stream)"
    )
