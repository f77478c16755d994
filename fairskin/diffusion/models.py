"""Diffusion models. For now: the tiny conditional UNet built in code (demo/smoke/benchmarks).

Config from FIELD-NOTES.md: a UNet2DConditionModel that trains and samples on CPU in seconds.
"""

from __future__ import annotations


def tiny_unet_config(sample_size: int = 32, in_channels: int = 4, cross_attention_dim: int = 8,
                     block_out_channels: tuple[int, ...] = (4, 8)) -> dict:
    """Keyword arguments of a tiny ``UNet2DConditionModel`` (random weights, CPU-friendly)."""
    return dict(block_out_channels=block_out_channels, layers_per_block=1, sample_size=sample_size,
                in_channels=in_channels, out_channels=in_channels,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=cross_attention_dim, norm_num_groups=2)


def build_tiny_unet(**kwargs):
    """A tiny ``diffusers.UNet2DConditionModel`` from :func:`tiny_unet_config` (seed torch first)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**tiny_unet_config(**kwargs))
