"""Models written in the style of code the project did not write (the zoo does not contain them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvChain(nn.Module):
    """Conv-BN-ReLU layers at one resolution (no pooling between them), then a pooled linear head."""

    def __init__(self, widths: tuple[int, ...] = (8, 8, 8), in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


class PreActBlock(nn.Module):
    """He et al. 2016b: BN-ReLU-Conv twice, and the identity added after (no ReLU after the add)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(out)))


class PreActResNet(nn.Module):
    def __init__(self, blocks: int = 3, width: int = 8, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stage = nn.Sequential(*(PreActBlock(width) for _ in range(blocks)))
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stage(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


class FusedQKVAttention(nn.Module):
    """timm-style attention: one Linear makes q, k and v, split by reshape + unbind."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class FusedQKVBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), FusedQKVAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FusedQKVViT(nn.Module):
    """A ViT whose attention uses one fused qkv projection."""

    def __init__(self, dim: int = 16, depth: int = 2, heads: int = 2, in_channels: int = 1, num_classes: int = 10,
                 patch: int = 2, image_size: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(FusedQKVBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# -- models in the style of the architectures whose patterns issue 12 covers ----------------------------------

def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool) -> torch.Tensor:
    """torchvision's ``ops.stochastic_depth``: the identity at eval, each sample ("row") or the batch dropped
    with probability ``p`` in training (the survivors scaled by ``1 / (1 - p)``)."""
    if not training or p == 0.0:
        return x
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * noise.div_(1.0 - p)


torch.fx.wrap("stochastic_depth")  # one call_function node, as torchvision records it


class StochasticDepth(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, "row", self.training)


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels of an (N, C, H, W) map, channels-last in between (F.layer_norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, channels-last LayerNorm, pointwise MLP, layer scale, stochastic depth, residual.
    ``channels_last_scale``: layer scale of shape (C,) applied before permuting back (timm), else (C, 1, 1)."""

    def __init__(self, dim: int, channels_last_scale: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.to_last, self.to_first = Permute([0, 2, 3, 1]), Permute([0, 3, 1, 2])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.last = channels_last_scale
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5 if channels_last_scale else torch.rand(dim, 1, 1) + 0.5)
        self.drop = StochasticDepth(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(self.to_last(self.dw(x))))))
        y = self.to_first(y * self.gamma) if self.last else self.gamma * self.to_first(y)
        y = self.drop(y)
        y += x
        return y


class TinyConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, int] = (8, 16), in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0], False), ConvNeXtBlock(dims[0], True))
        self.down = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = ConvNeXtBlock(dims[1], False)
        self.norm, self.head = nn.LayerNorm(dims[1]), nn.Linear(dims[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


def window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, proj_weight: torch.Tensor,
                     proj_bias: torch.Tensor, bias_table: torch.Tensor, bias_index: torch.Tensor, window: int,
                     heads: int, shift: int) -> torch.Tensor:
    """Swin's (shifted) window attention on a channels-last (B, H, W, C) map, written as torchvision does: one
    function that branches on sizes (so fx cannot trace it), wrapped."""
    b, h, w, c = x.shape
    pad_b, pad_r = (window - h % window) % window, (window - w % window) % window
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = x.shape[1], x.shape[2]
    if window >= ph:
        shift = 0
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = (ph // window) * (pw // window)
    x = x.view(b, ph // window, window, pw // window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * windows, window * window, c)  # window partition
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.size(0), x.size(1), 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    n = window * window
    bias = bias_table[bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
    attn = attn + bias.unsqueeze(0)  # a relative position bias per head
    if shift > 0:
        mask = x.new_zeros((ph, pw))
        cuts = ((0, -window), (-window, -shift), (-shift, None))
        label = 0
        for hs_ in cuts:
            for ws_ in cuts:
                mask[hs_[0]:hs_[1], ws_[0]:ws_[1]] = label
                label += 1
        mask = mask.view(ph // window, window, pw // window, window).permute(0, 2, 1, 3).reshape(windows, n)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0)
        attn = attn.view(x.size(0) // windows, windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(b, ph // window, pw // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, c)  # window reverse
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


torch.fx.wrap("window_attention")


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.table,
                                self.index, self.window, self.heads, self.shift)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = StochasticDepth(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Swin's downsampling: the four 2x2 neighbours side by side along the channels, LayerNorm, Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class TinySwin(nn.Module):
    """Patch embedding, a window block and a shifted-window block, patch merging, a head."""

    def __init__(self, dim: int = 8, heads: int = 2, window: int = 2, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.to_last, self.norm0 = Permute([0, 2, 3, 1]), nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinBlock(dim, heads, window, 0), SwinBlock(dim, heads, window, window // 2))
        self.merge = PatchMerging(dim)
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(self.blocks(self.norm0(self.to_last(self.patch(x)))))
        return self.head(self.norm(x).mean((1, 2)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, c, h, w)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2: split the channels in two, transform one half, concatenate, shuffle (stride 2: both
    halves read the whole input)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, cin, relu=False), conv_bn(cin, half, 1))
        self.branch2 = nn.Sequential(conv_bn(cin if stride > 1 else half, half, 1),
                                     conv_bn(half, half, 3, stride, half, relu=False), conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module):
    def __init__(self, widths: tuple[int, int] = (8, 16), in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0], 3)
        self.units = nn.Sequential(ShuffleUnit(widths[0], widths[1], 2), ShuffleUnit(widths[1], widths[1], 1),
                                   ShuffleUnit(widths[1], widths[1], 1))
        self.last = conv_bn(widths[1], 2 * widths[1], 1)
        self.fc = nn.Linear(2 * widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.units(self.stem(x)))
        return self.fc(torch.max(x.flatten(2), dim=2).values)  # global max pooling, values of (values, indices)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class MBConv(nn.Module):
    """EfficientNet's inverted bottleneck: expand, depthwise, squeeze-and-excitation, project, stochastic depth."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            SqueezeExcitation(mid, max(1, cin // 4)),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.drop = StochasticDepth(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.drop(y) if self.residual else y


class TinyEfficientNet(nn.Module):
    def __init__(self, widths: tuple[int, int] = (8, 16), in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(widths[0], widths[0], 1), MBConv(widths[0], widths[1], 2),
                                    MBConv(widths[1], widths[1], 1))
        self.head = nn.Sequential(nn.Conv2d(widths[1], 2 * widths[1], 1, bias=False), nn.BatchNorm2d(2 * widths[1]),
                                  nn.Hardswish())
        self.fc = nn.Linear(2 * widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1))


class ChunkAttention(nn.Module):
    """Fused qkv split by ``chunk`` (most real transformers), heads by view + transpose, SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class GatedMLP(nn.Module):
    """A GLU-style gate (SwiGLU): one Linear makes value and gate, split by ``chunk``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))


class ChunkViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), ChunkAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), GatedMLP(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ChunkViT(nn.Module):
    """A ViT whose attention splits one fused qkv projection with ``chunk`` and whose MLP is gated."""

    def __init__(self, dim: int = 16, depth: int = 2, heads: int = 2, in_channels: int = 1, num_classes: int = 10,
                 patch: int = 2, image_size: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ChunkViTBlock(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class RelativeAttention(nn.Module):
    """MaxViT's attention over partitions (B, G, P, C): fused qkv split by ``torch.chunk``, einsum, a relative
    position bias per head."""

    def __init__(self, dim: int, head_dim: int, size: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.n = dim // head_dim, head_dim, size * size
        self.to_qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * size - 1) ** 2, self.heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (size - 1)
        self.register_buffer("index", rel[:, :, 0] * (2 * size - 1) + rel[:, :, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, d = x.shape
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(b, g, p, self.heads, self.head_dim).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        dots = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k * d ** -0.5)
        bias = self.table[self.index.view(-1)].view(self.n, self.n, -1).permute(2, 0, 1).contiguous()
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", F.softmax(dots + bias.unsqueeze(0), dim=-1), v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


class PartitionAttention(nn.Module):
    """Block ("window") or grid attention on an (N, C, H, W) map, with an MLP, both residual."""

    def __init__(self, dim: int, head_dim: int, partition: int, grid: bool) -> None:
        super().__init__()
        self.p, self.grid = partition, grid
        self.norm1, self.attn = nn.LayerNorm(dim), RelativeAttention(dim, head_dim, partition)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = StochasticDepth(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.p if not self.grid else h // self.p
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p, c)
        if self.grid:
            x = torch.swapaxes(x, -2, -3)
        x = x + self.drop(self.attn(self.norm1(x)))
        x = x + self.drop(self.mlp(self.norm2(x)))
        if self.grid:
            x = torch.swapaxes(x, -2, -3)
        x = x.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h, w)


class TinyMaxViT(nn.Module):
    """MaxViT: an MBConv block, then block attention and grid attention."""

    def __init__(self, dim: int = 16, head_dim: int = 8, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())
        self.mbconv = MBConv(dim, dim, 1)
        self.block_attn = PartitionAttention(dim, head_dim, 2, grid=False)
        self.grid_attn = PartitionAttention(dim, head_dim, 2, grid=True)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grid_attn(self.block_attn(self.mbconv(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class ShortcutBlock(nn.Module):
    """A basic block as code outside the project writes it: the shortcut is always a module, ``nn.Identity()``
    where the shape stays (a ``call_module`` node of its own), a 1x1 projection where it changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class StageResNet(nn.Module):
    """A ResNet of two or more stages with ``blocks[i]`` blocks in stage i (Xu et al.'s pairs: (3, 3) against (2, 1));
    every stage after the first opens with a strided block, so a stage of one block is one strided block."""

    def __init__(self, blocks: tuple[int, ...] = (3, 3), width: int = 1, in_channels: int = 1,
                 num_classes: int = 10, base: int = 16) -> None:
        super().__init__()
        widths = [base * width * 2**i for i in range(len(blocks))]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                layers.append(ShortcutBlock(c, w, 2 if i > 0 and j == 0 else 1))
                c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(self.stem(x)), 1).flatten(1))
