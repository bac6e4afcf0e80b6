"""Decoder-style test models written the way transformer libraries write them (not the zoo's).

* ``RotaryDecoder``: a Llama-style decoder: RMSNorm written out, rotary position embeddings (``rotate_half``
  by slicing and ``cat``), grouped-query attention with ``repeat_kv`` (``[:, :, None]``, ``expand``,
  ``reshape``), ``enable_gqa=True`` or written-out attention (``softmax(q kᵀ) v``), a SwiGLU MLP.
* ``BiasedAttention``: T5-style attention with a learned per-head relative position bias added to the scores.
* ``Conv1DStack``: GPT-2's ``Conv1D`` (``torch.addmm`` with the weight stored in x out), a fused qkv split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    b, h, s, d = x.shape
    if n == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(x.shape[1], device=x.device).float()
        freqs = t[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mode: str) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd, self.mode = heads, kv_heads, dim // heads, mode
        self.q_proj = nn.Linear(dim, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        if self.mode == "gqa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), is_causal=True)
        else:
            k, v = repeat_kv(k, rep), repeat_kv(v, rep)
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
            mask = torch.full((s, s), float("-inf"), device=x.device).triu(1)
            weights = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(weights, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mode: str) -> None:
        super().__init__()
        self.input_norm, self.post_norm = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, mode)
        self.gate, self.up, self.down = nn.Linear(dim, 2 * dim, bias=False), nn.Linear(dim, 2 * dim, bias=False), \
            nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), cos, sin)
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class RotaryDecoder(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 32, heads: int = 4, kv_heads: int = 2, depth: int = 2,
                 mode: str = "sdpa") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rotary = Rotary(dim // heads)
        self.layers = nn.ModuleList(DecoderBlock(dim, heads, kv_heads, mode) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        cos, sin = self.rotary(x)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


class BiasedAttention(nn.Module):
    """One T5-style encoder layer: scores + a learned bias per head and relative position, no scaling."""

    def __init__(self, vocab: int = 40, dim: int = 16, heads: int = 2, buckets: int = 8) -> None:
        super().__init__()
        self.heads, self.hd, self.buckets = heads, dim // heads, buckets
        self.embed = nn.Embedding(vocab, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.bias = nn.Embedding(buckets, heads)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, self.heads, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        pos = torch.arange(s, device=x.device)
        rel = (pos[None, :] - pos[:, None]).clamp(-(self.buckets // 2), self.buckets // 2 - 1) + self.buckets // 2
        bias = self.bias(rel).permute(2, 0, 1).unsqueeze(0)
        weights = F.softmax(torch.matmul(q, k.transpose(3, 2)) + bias, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, s, -1)
        return self.head((x + self.o(out)).mean(1))


class Conv1D(nn.Module):
    """GPT-2's layer: a Linear whose weight is stored (in, out) and applied with ``torch.addmm``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)  # noqa: RUF005 (as GPT-2 writes it; fx cannot unpack a shape)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Conv1DStack(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(16, dim)
        self.ln = nn.LayerNorm(dim)
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.c_out = Conv1D(4 * dim, dim), Conv1D(dim, 4 * dim)
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        x = self.wte(ids) + self.wpe(torch.arange(s, device=ids.device))
        q, k, v = self.c_attn(self.ln(x)).split(x.shape[-1], dim=2)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, -1)
        x = x + self.c_proj(a)
        x = x + self.c_out(F.gelu(self.c_fc(self.ln(x)), approximate="tanh"))
        return F.linear(self.ln_f(x), self.wte.weight)


class PostNormLayer(nn.Module):
    """A BERT layer: ``LayerNorm(x + attention(x))``, then ``LayerNorm(x + mlp(x))`` (post-norm)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.out(a))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class PostNormEncoder(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 16, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(16, dim)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(PostNormLayer(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))
        for layer in self.layers:
            x = layer(x)
        return self.head(x[:, 0])


class HeadsEncoder(nn.Module):
    """A pre-LN encoder whose attention has ``heads`` heads of ``head_dim`` whatever the stream's width (the head
    count spelled as a number in the views, as most attentions write it)."""

    def __init__(self, heads: int, vocab: int = 40, dim: int = 16, head_dim: int = 8) -> None:
        super().__init__()
        self.heads, self.hd = heads, head_dim
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.ln1, self.ln2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        x = self.embed(ids) + self.pos[:, :s]
        h = self.ln1(x)
        q, k, v = (p(h).view(b, s, self.heads, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, -1))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(self.norm(x).mean(1))
