"""PyTorch + transformers + peft fine-tuning throughput on the steps `bench --sections finetune`
trains, for comparison.

Usage: finetune_torch_bench.py GGUF BATCHES THREADS METHOD, METHOD `lora` (rank 8, alpha 16, on
q/k/v/o, no dropout) or `full`. transformers reads SmolLM2's GGUF (dequantized to f32); BATCHES is
the bench's `target/bench/finetune-batches.json`: each step's sequences as token ids and target
flags. A step is the bench's: the sequences right-padded to the step's longest, causal attention,
mean cross-entropy over the target tokens, global-norm clipping at 1.0, AdamW (0.9, 0.95, 1e-8,
no weight decay), in f32. Prints tokens read per second (each sequence's tokens but the last,
padding excluded) over every step after the first, and peak resident memory.
"""
import json
import os
import resource
import sys
import time
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    gguf, batches, threads, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(model, config)
    elif method != "full":
        sys.exit(f"unknown method {method!r}: lora or full")
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=2e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    with open(batches) as f:
        steps = json.load(f)["steps"]

    timed_tokens, started = 0, None
    for index, sequences in enumerate(steps):
        if index == 1:
            started = time.perf_counter()
        length = max(len(s["tokens"]) for s in sequences)
        ids = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        for row, s in enumerate(sequences):
            ids[row, : len(s["tokens"])] = torch.tensor(s["tokens"])
            for position, (token, target) in enumerate(zip(s["tokens"], s["targets"])):
                if target:
                    labels[row, position] = token
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 1:
            timed_tokens += sum(len(s["tokens"]) - 1 for s in sequences)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    name = "LoRA r8 q/k/v/o" if method == "lora" else "full"
    print(f"PyTorch {torch.__version__} + transformers + peft, {name}, {threads} threads: "
          f"{timed_tokens / seconds:.0f} tokens/s ({(len(steps) - 1) / seconds:.3f} steps/s), "
          f"peak memory {peak_mib} MiB")


if __name__ == "__main__":
    main()
