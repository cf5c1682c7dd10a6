"""PyTorch's training throughput on the model `bench --sections train` trains, for comparison.

Usage: train_torch_bench.py THREADS. The same byte-level llama (4 layers, 128 wide, 4 heads,
SwiGLU 344, RMSNorm, rotary embeddings, tied embeddings, 257 tokens), the same step (16 sequences
of 64 tokens, mean cross-entropy, global-norm clipping at 1.0, AdamW with the same betas and
weight decay), on the CPU in f32. Prints tokens/s over 60 steps after 5 warm-up steps.
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, INNER, CONTEXT, BATCH, STEPS = 257, 128, 4, 4, 344, 64, 16, 60
HEAD_DIM = HIDDEN // HEADS


def rotary(length):
    inverse = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    angles = torch.outer(torch.arange(length).float(), inverse)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(HIDDEN, eps=1e-5), nn.RMSNorm(HIDDEN, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(HIDDEN, INNER, bias=False), nn.Linear(HIDDEN, INNER, bias=False)
        self.down = nn.Linear(INNER, HIDDEN, bias=False)

    def forward(self, h, cos, sin):
        b, t, _ = h.shape
        x = self.attn_norm(h)
        split = lambda y: y.view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        q, k, v = rotate(split(self.q(x)), cos, sin), rotate(split(self.k(x)), cos, sin), split(self.v(x))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(attended.transpose(1, 2).reshape(b, t, HIDDEN))
        x = self.mlp_norm(h)
        return h + self.down(F.silu(self.gate(x)) * self.up(x))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(HIDDEN, eps=1e-5)
        self.cos, self.sin = rotary(CONTEXT)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h, self.cos, self.sin)
        return self.norm(h) @ self.embed.weight.T


torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = Llama()
decay = [p for p in model.parameters() if p.dim() >= 2]
rest = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95), eps=1e-8
)
windows = torch.randint(0, VOCAB, (STEPS + 5, BATCH, CONTEXT + 1))


def step(window):
    logits = model(window[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


for i in range(5):
    step(windows[i])
started = time.perf_counter()
for i in range(STEPS):
    step(windows[5 + i])
seconds = time.perf_counter() - started
print(f"PyTorch {torch.__version__} training, same model and step, {sys.argv[1]} threads: "
      f"{STEPS * BATCH * CONTEXT / seconds:.0f} tokens/s ({STEPS / seconds:.2f} steps/s)")
