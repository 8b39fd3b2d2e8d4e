"""Semantic segmentation with segmentation-models-pytorch (smp) heads on crossformers backbones.

The decoders and the segmentation head are smp's own (``FPNDecoder`` — the Semantic FPN of Kirillov et al. 2019 —,
``UPerNetDecoder`` — Xiao et al. 2018 —, ``SegmentationHead``), built with the same arguments as ``smp.FPN`` and
``smp.UPerNet``; the model is an ``smp.base.SegmentationModel`` (``forward``, ``predict``, input-size check). Only the
encoder is ours: :class:`CrossformersEncoder` presents a :class:`~crossformers.detection.PyramidBackbone` the way
smp's ``TimmUniversalEncoder`` presents a timm model (features at strides 1, 2, 4, 8, 16, 32; the stride-2 one is an
empty placeholder, as smp does for every transformer).

smp can also build hierarchical crossformers models by name, since they are timm models: after ``import crossformers``,
``smp.FPN(encoder_name="tu-crossformer_small", encoder_weights=None)`` works for CrossFormer/CrossFormer++ and the
hybrid FcaFormer (timm names, see ``crossformers.factory.timm_name``). It does not work for CrossViT and the plain
FcaFormer (smp accepts only encoders with strides 2-32 or 4-32, "Unsupported model downsampling pattern"), and its
``encoder_weights`` cannot take our checkpoints; :func:`fpn` and :func:`upernet` cover every family and load
classification weights strictly.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

try:
    from segmentation_models_pytorch.base import SegmentationHead, SegmentationModel
    from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
    from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("crossformers.segmentation needs segmentation-models-pytorch: "
                      "pip install segmentation-models-pytorch==0.6.0") from e

from ..dense import BackboneError, PyramidBackbone, pyramid_backbone

__all__ = ["CrossformersEncoder", "EncoderDecoder", "fpn", "upernet"]


class CrossformersEncoder(nn.Module):
    """A :class:`PyramidBackbone` with smp's encoder interface.

    ``forward(x (B, C, H, W))`` -> ``[x, empty (B, 0, H/2, W/2), f4, f8, f16, f32]``; ``out_channels`` =
    ``[C, 0, c4, c8, c16, c32]``; ``output_stride`` = 32 (smp requires H and W divisible by it).
    """

    def __init__(self, body: PyramidBackbone):
        super().__init__()
        self.body = body
        self._out_channels = [body.in_chans, 0, *body.out_channels]

    @property
    def out_channels(self) -> list[int]:
        return self._out_channels

    @property
    def output_stride(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        B, _, H, W = x.shape
        return [x, x.new_empty(B, 0, H // 2, W // 2), *maps]


class EncoderDecoder(SegmentationModel):
    """smp segmentation model from parts: ``encoder`` -> ``decoder`` -> ``segmentation_head`` (logits at input
    resolution). Input (B, C, H, W) with H, W multiples of 32 -> (B, classes, H, W)."""

    def __init__(self, encoder: CrossformersEncoder, decoder: nn.Module, segmentation_head: nn.Module, name: str):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.classification_head = None
        self.name = name
        self.initialize()


def _encoder(backbone_name, checkpoint_path, pretrained, neck_dim, backbone_kwargs) -> CrossformersEncoder:
    if isinstance(backbone_name, PyramidBackbone):
        if checkpoint_path is not None or pretrained or backbone_kwargs:
            raise BackboneError("a ready PyramidBackbone was given: load its weights when building it")
        if backbone_name.levels != (0, 1, 2, 3):
            raise BackboneError(f"segmentation needs all four pyramid levels (strides 4-32), the backbone has "
                                f"{backbone_name.levels}")
        return CrossformersEncoder(backbone_name)
    return CrossformersEncoder(pyramid_backbone(backbone_name, checkpoint_path, pretrained, (0, 1, 2, 3), neck_dim,
                                                **dict(backbone_kwargs or {})))


def fpn(
    backbone_name: str | os.PathLike | PyramidBackbone,
    num_classes: int,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    pyramid_channels: int = 256,
    segmentation_channels: int = 128,
    dropout: float = 0.2,
    merge_policy: str = "add",
    neck_dim: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> EncoderDecoder:
    """Semantic FPN (Kirillov et al. 2019; smp's ``FPNDecoder``) on a crossformers backbone.

    Args:
        backbone_name: model name, one of our run directories, or a ready :class:`PyramidBackbone`.
        num_classes: output classes (logit channels).
        checkpoint_path: classification weights for the backbone (head dropped explicitly, rest strict).
        pretrained: the authors' released backbone weights.
        pyramid_channels, segmentation_channels, dropout, merge_policy: smp ``FPN`` decoder arguments (defaults as
            ``smp.FPN``).
        neck_dim: channels of the simple feature pyramid of plain backbones.
        backbone_kwargs: model arguments for the backbone.

    Returns:
        :class:`EncoderDecoder`: (B, C, H, W), H and W multiples of 32 -> logits (B, num_classes, H, W).
        ``model.encoder.body`` is the :class:`PyramidBackbone`.

    Raises:
        UnknownModelError, CheckpointError, BackboneError: as :func:`crossformers.detection.backbone`.
    """
    encoder = _encoder(backbone_name, checkpoint_path, pretrained, neck_dim, backbone_kwargs)
    decoder = FPNDecoder(encoder_channels=encoder.out_channels, encoder_depth=5, pyramid_channels=pyramid_channels,
                         segmentation_channels=segmentation_channels, dropout=dropout, merge_policy=merge_policy,
                         interpolation_mode="nearest")
    head = SegmentationHead(in_channels=decoder.out_channels, out_channels=num_classes, kernel_size=1, upsampling=4)
    return EncoderDecoder(encoder, decoder, head, f"fpn-{backbone_name if isinstance(backbone_name, str) else 'custom'}")


def upernet(
    backbone_name: str | os.PathLike | PyramidBackbone,
    num_classes: int,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    decoder_channels: int = 512,
    decoder_use_norm: bool | str | dict = "batchnorm",
    neck_dim: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> EncoderDecoder:
    """UPerNet (Xiao et al. 2018; smp's ``UPerNetDecoder``: PPM on stride 32 + FPN fusion) on a crossformers backbone.

    Args:
        backbone_name, num_classes, checkpoint_path, pretrained, neck_dim, backbone_kwargs: as :func:`fpn`.
        decoder_channels: UPerNet width. Default 512, the width of the mmsegmentation configs behind the papers'
            ADE20K tables (their published parameter counts are matched up to the auxiliary FCN head, which is used
            only in training); smp's own default is 256.
        decoder_use_norm: smp normalisation argument of the decoder convolutions.

    Returns:
        :class:`EncoderDecoder`: (B, C, H, W), H and W multiples of 32 -> logits (B, num_classes, H, W).

    Raises:
        UnknownModelError, CheckpointError, BackboneError: as :func:`crossformers.detection.backbone`.
    """
    encoder = _encoder(backbone_name, checkpoint_path, pretrained, neck_dim, backbone_kwargs)
    decoder = UPerNetDecoder(encoder_channels=encoder.out_channels, encoder_depth=5,
                             decoder_channels=decoder_channels, use_norm=decoder_use_norm)
    head = SegmentationHead(in_channels=decoder_channels, out_channels=num_classes, kernel_size=1, upsampling=4)
    return EncoderDecoder(encoder, decoder, head,
                          f"upernet-{backbone_name if isinstance(backbone_name, str) else 'custom'}")
