"""Stable Diffusion parts: loaded from a folder / hub id, or built tiny in code; prompts.

The tiny model (demo/smoke/tests) follows FIELD-NOTES.md: a 2-block UNet, a 3-block VAE
(two down-samplings: 64 px images -> 16 x 16 latents), a 2-layer CLIP text encoder, and a
character-level CLIP tokenizer written as ``vocab.json`` + ``merges.txt`` and read back
with ``from_pretrained(..., model_max_length=77)`` (transformers 5 silently ignores
``vocab_file=`` arguments and pads to ~1e30 without the length).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fairskin.model_lock import one_model_at_a_time

TOKENIZER_MAX_LENGTH = 77
TINY_TEXT_DIM = 32
LATENT_DOWNSAMPLE = 4  # tiny VAE: image side / latent side


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local folder nor allowed to be downloaded."""


@dataclass
class SDParts:
    """The parts of a Stable Diffusion pipeline that training and sampling use."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any

    def pipeline(self, scheduler: Any | None = None):
        """A ``StableDiffusionPipeline`` over these parts (no safety checker)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler or self.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )


def tiny_unet_config(
    sample_size: int = 32,
    in_channels: int = 4,
    cross_attention_dim: int = TINY_TEXT_DIM,
    block_out_channels: tuple[int, ...] = (16, 32),
) -> dict:
    """Keyword arguments of a tiny ``UNet2DConditionModel`` (random weights, CPU-friendly)."""
    return dict(
        block_out_channels=block_out_channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=min(8, block_out_channels[0]),
    )


@one_model_at_a_time
def build_tiny_unet(**kwargs):
    """A tiny ``diffusers.UNet2DConditionModel`` from :func:`tiny_unet_config` (seed torch first)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**tiny_unet_config(**kwargs))


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _char_tokenizer_files(folder: Path) -> None:
    """A character-level CLIP vocabulary: every byte-level character, alone and word-final."""
    chars = _byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_tokenizer():
    """A character-level ``CLIPTokenizer`` (514 tokens), max length 77."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _char_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=TOKENIZER_MAX_LENGTH)


@one_model_at_a_time
def build_tiny_sd(image_size: int = 64, seed: int = 0, zero_terminal_snr: bool = False) -> SDParts:
    """All parts of a tiny SD with random weights, deterministic by ``seed``. ``zero_terminal_snr``: SD's
    betas rescaled to zero terminal SNR, v-prediction and trailing timesteps (``diffusion.zero_terminal_snr``)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=64,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # Three encoder blocks (two down-samplings, 64 px -> 16 x 16 latents) and no mid-block
    # attention: a 32 x 32 attention map made the VAE 4.5x slower per step for no visible gain.
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
        mid_block_add_attention=False,
    )
    unet = build_tiny_unet(sample_size=image_size // LATENT_DOWNSAMPLE)
    schedule = (
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
        if zero_terminal_snr
        else {"prediction_type": "epsilon"}
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        **schedule,
    )
    return SDParts(unet, vae, text_encoder, tokenizer, scheduler)


SD14_CONFIG_DIR = Path(__file__).with_name("sd_v1_4")
SD14_PARTS = ("unet", "vae", "text_encoder", "scheduler")


def sd14_configs() -> dict[str, dict]:
    """SD v1-4's architecture (no weights): {unet, vae, text_encoder, scheduler} config dicts, from the
    copies of the model's own ``config.json`` files in ``fairskin/diffusion/sd_v1_4/``."""
    return {part: json.loads((SD14_CONFIG_DIR / f"{part}_config.json").read_text()) for part in SD14_PARTS}


def sd_shaped_tiny_configs(
    image_size: int = 64, width: int = 8, text_dim: int = TINY_TEXT_DIM, text_layers: int = 2
) -> dict[str, dict]:
    """SD v1-4's configs at a few channels: every block type, block depth, attention layout, the
    8x VAE and SD's PNDM scheduler are kept; channels are ``width`` x SD's multipliers (1, 2, 4, 4)
    for the UNet and the VAE, and the text encoder is ``text_layers`` x ``text_dim``.
    ``image_size`` >= 64: the UNet down-samples the (image_size / 8) latents three times."""
    if image_size < 64 or image_size % 64:
        raise ValueError(f"image_size {image_size}: an SD-shaped model needs a multiple of 64 (8x8 latents or more)")
    configs = sd14_configs()
    groups = max(1, width // 2)
    configs["unet"].update(
        block_out_channels=[width * m for m in (1, 2, 4, 4)],
        norm_num_groups=groups,
        cross_attention_dim=text_dim,
        sample_size=image_size // 8,
    )
    configs["vae"].update(
        block_out_channels=[width * m for m in (1, 2, 4, 4)], norm_num_groups=groups, sample_size=image_size
    )
    configs["text_encoder"].update(
        hidden_size=text_dim,
        intermediate_size=4 * text_dim,
        num_hidden_layers=text_layers,
        num_attention_heads=2,
        projection_dim=text_dim,
        vocab_size=None,
    )
    return configs


@one_model_at_a_time
def build_sd(configs: dict[str, dict], seed: int = 0, device: str | torch.device = "cpu") -> SDParts:
    """All parts of an SD pipeline with random weights from config dicts (:func:`sd14_configs` or
    :func:`sd_shaped_tiny_configs`), deterministic by ``seed``. The tokenizer is the character-level one
    of :func:`build_tiny_tokenizer` (SD's BPE vocabulary is not in the repository); the text encoder's
    vocabulary keeps its configured size (``vocab_size=None``: the tokenizer's). The weights are made
    on ``device`` (SD v1-4's 1.07 billion parameters initialise in seconds on a GPU, minutes on a CPU)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    text = dict(configs["text_encoder"])
    text.update(
        vocab_size=text.get("vocab_size") or len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(text))
        vae = AutoencoderKL.from_config(configs["vae"])
        unet = UNet2DConditionModel.from_config(configs["unet"])
    scheduler = PNDMScheduler.from_config(configs["scheduler"])
    return SDParts(unet, vae, text_encoder.eval(), tokenizer, scheduler)


@one_model_at_a_time
def load_sd(model: str, allow_download: bool = False) -> SDParts:
    """SD parts from a pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``) or, with ``allow_download``, a hub id such as ``CompVis/stable-diffusion-v1-4``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not Path(model).is_dir() and not allow_download:
        raise ModelNotFoundError(
            f"diffusion.model {model!r} is not a local folder and downloads are off. Download the pipeline once "
            f"(e.g. `huggingface-cli download {model} --local-dir /models/sd-v1-4`) and set "
            f"diffusion.model=/models/sd-v1-4, or set diffusion.allow_download=true"
        )
    common = {"local_files_only": not allow_download}
    weights = {**common, "use_safetensors": True}  # never unpickle a .bin
    tokenizer = CLIPTokenizer.from_pretrained(
        model, subfolder="tokenizer", model_max_length=TOKENIZER_MAX_LENGTH, **common
    )
    return SDParts(
        unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **weights),
        text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **weights),
        tokenizer=tokenizer,
        noise_scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **common),
    )


def save_sd(parts: SDParts, folder: Path) -> Path:
    """Write a diffusers pipeline folder (safetensors weights) that ``StableDiffusionPipeline.from_pretrained`` reads."""
    parts.pipeline().save_pretrained(folder, safe_serialization=True)
    return Path(folder)


# diffusers' adapter file: a pipeline folder that holds it is the base pipeline plus that adapter (an adapter
# method's result, fairskin.methods.lora), loaded with ``load_lora_weights``.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def has_adapter(folder: Path) -> bool:
    """Whether the pipeline ``folder`` is a base plus an adapter file (:data:`ADAPTER_FILE`)."""
    return (Path(folder) / ADAPTER_FILE).is_file()


def trained_fingerprint(folder: Path) -> str:
    """What a fine-tune trained, of its pipeline ``folder``: its UNet's fingerprint, and, for an adapter on the base,
    the adapter file's too (two adapters on one base differ)."""
    from fairskin.fingerprints import content_fingerprint
    from fairskin.provenance import folder_fingerprint

    unet = folder_fingerprint(Path(folder) / "unet")
    if not has_adapter(folder):
        return unet
    return unet + ":" + content_fingerprint(Path(folder) / ADAPTER_FILE)


def base_fingerprint(folder: Path) -> str:
    """The pipeline ``folder``'s parts without its adapter file (equal for two adapters on the same base)."""
    from fairskin.provenance import folder_fingerprint

    parts = [folder_fingerprint(Path(folder) / p) for p in PIPELINE_PARTS if (Path(folder) / p).is_dir()]
    return ":".join(parts)


@one_model_at_a_time
def load_pipeline(folder: Path):
    """``StableDiffusionPipeline.from_pretrained(folder)`` without safety checker, offline."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True, use_safetensors=True
    )


def prompt_for(template: str, group: str, disease: str) -> str:
    """The prompt of a subclass, e.g. ``"{group} people {disease}"`` -> ``"Asian people psoriasis"``."""
    return template.format(group=group, disease=disease)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Text embeddings (len(prompts), 77, hidden) as the UNet's ``encoder_hidden_states``, on the encoder's device."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]
