"""A toy fourth model family, written the way a new family is added (docs/architecture.md, "How to add a family"):
one file, nothing changed elsewhere. A ViT-like pyramid: a stride-4 patch embedding, then stages of global
self-attention blocks with 2x2 patch merging between them. It implements the timm model API and the family protocol
(crossformers.models.protocol) and registers two names, `toy_tiny` and `toy_small`.
"""
from __future__ import annotations

import numpy as np
import torch
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from torch import nn

from crossformers.checkpoint import register_checkpoint_markers
from crossformers.factory import register_name
from crossformers.layers.attention import Attention
from crossformers.layers.geometry import conv_lattice
from crossformers.models._base import HierarchicalModel
from crossformers.models._helpers import build_family_model
from crossformers.models.protocol import AttentionLayout, BlockInfo, SizeRule, TokenSegment, call_arg

register_checkpoint_markers("Toy (crossformers layout)", ("toy_marker",))


class ToyBlock(nn.Module):
    """Pre-norm block with global attention over the (B, H, W, C) map and an MLP."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.attn(self.norm1(x).reshape(B, H * W, C)).reshape(B, H, W, C)
        return x + self.mlp(self.norm2(x))


class ToyStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, down: bool):
        super().__init__()
        self.downsample = nn.Conv2d(in_dim, dim, 2, stride=2) if down else nn.Identity()
        self.blocks = nn.Sequential(*[ToyBlock(dim, num_heads) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.blocks(x)


class ToyNet(HierarchicalModel):
    """Images (B, in_chans, H, W), H and W multiples of 32 -> logits; stage maps channels-last (``map_fmt``)."""

    family = "toy"
    prefers_channels_last = False

    def __init__(self, in_chans: int = 3, num_classes: int = 10, embed_dim: int = 16, depths=(1, 1, 1, 1),
                 num_heads: int = 2, img_size: int = 64, drop_path_rate: float = 0.0):
        super().__init__()
        self.map_fmt, self.in_chans, self.num_classes, self.min_input_size = "NHWC", in_chans, num_classes, 32
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, 4, stride=4)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.stages = nn.Sequential(*[ToyStage(dims[max(i - 1, 0)], dims[i], d, num_heads, i > 0)
                                      for i, d in enumerate(depths)])
        self.num_features = self.head_hidden_size = dims[-1]
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, input_fmt="NHWC")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x).permute(0, 2, 3, 1)

    def convert_state_dict(self, state_dict: dict) -> dict:
        return dict(state_dict)

    # ---- the family protocol
    def block_infos(self) -> list[BlockInfo]:
        out = []
        for s, stage in enumerate(self.stages):
            for j, blk in enumerate(stage.blocks):
                out.append(BlockInfo(name=f"stages.{s}.blocks.{j}", index=len(out), module=blk, family=self.family,
                                     kind="global", stage=s, attention=blk.attn.sdpa, position=j))
        return out

    def input_modules(self) -> list[nn.Module]:
        return [self, self.patch_embed]

    def attention_layout(self, block: BlockInfo, args: tuple, kwargs: dict, image_size) -> AttentionLayout:
        x = call_arg(args, kwargs, 0, "x")
        H, W = int(x.shape[1]), int(x.shape[2])
        convs = [self.patch_embed] + [self.stages[s].downsample for s in range(1, block.stage + 1)]
        lattice = conv_lattice(convs, H, W)
        seg = [TokenSegment("tokens", 0, H * W, lattice)]
        cells = np.arange(H * W)[None]
        return AttentionLayout(seg, list(seg), cells, cells.copy(), dict(grid=(H, W), stride_px=lattice.stride),
                               "global")

    def input_size_rule(self) -> SizeRule:
        return SizeRule((32, 32), (32, 32), "the patch merging halves every map: sizes divisible by 32")


default_cfgs = generate_default_cfgs({
    n: dict(url="", num_classes=10, input_size=(3, 64, 64), crop_pct=1.0, interpolation="bilinear",
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="patch_embed", classifier="head.fc")
    for n in ("toy_tiny.untrained", "toy_small.untrained")})


def _entrypoint(name: str, **defaults):
    """A timm entrypoint ``name(pretrained=False, **kwargs)``, registered with timm and crossformers."""
    def entrypoint(pretrained: bool = False, **kwargs) -> ToyNet:
        return build_family_model(ToyNet, name, pretrained, lambda sd, model: model.convert_state_dict(sd),
                                  feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
                                  **dict(defaults, **kwargs))
    entrypoint.__name__ = entrypoint.__qualname__ = name
    register_name(name)
    return register_model(entrypoint)


toy_tiny = _entrypoint("toy_tiny")
toy_small = _entrypoint("toy_small", embed_dim=24, num_heads=3)
