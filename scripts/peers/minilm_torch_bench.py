"""PyTorch's figure for sentence embeddings, for comparison with `bench --sections embed`.

Usage: minilm_torch_bench.py CHECKPOINT_DIR THREADS. Embeds the bench's 32 sentences as one batch
with transformers' BertModel on the CPU: tokenize, forward, masked mean pooling, L2 normalisation
(what sentence-transformers does for all-MiniLM-L6-v2). Prints sentences/s, median of 5 after a
warm-up, like Lantern's bench.
"""
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

transformers.utils.logging.disable_progress_bar()

path, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()

subjects = ["The cat", "A young engineer", "Our team", "The old bridge", "Every morning the market"]
endings = [
    "sat quietly by the window.",
    "shipped the release before the deadline.",
    "was repaired after the storm.",
    "opens early and closes late.",
]
batch = 32
sentences = [f"{subjects[i % len(subjects)]} {endings[i % len(endings)]}" for i in range(batch)]


def embed():
    inputs = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


assert embed().shape == (batch, 384)
rates = []
for _ in range(5):
    started = time.perf_counter()
    embed()
    rates.append(batch / (time.perf_counter() - started))
print(f"PyTorch {torch.__version__} embeddings, batch of {batch} sentences: "
      f"{statistics.median(rates):.1f} sentences/s (median of 5, {threads} threads)")
