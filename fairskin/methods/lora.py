"""LoRA: low-rank adapters on the UNet's attention projections, the base UNet frozen (Hu et al. 2021).

As diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` does it: the UNet's parameters frozen,
``unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
target_modules=["to_k", "to_q", "to_v", "to_out.0"]))``, only the adapters' parameters in the optimizer (float32:
the engine keeps weights in float32 and runs the forward under autocast), the result saved with
``StableDiffusionPipeline.save_lora_weights(..., unet_lora_layers=convert_state_dict_to_diffusers(
get_peft_model_state_dict(unet)), safe_serialization=True)`` as ``pytorch_lora_weights.safetensors`` beside the
base pipeline, and loaded with ``load_lora_weights``. No EMA (the example keeps none; the engine's EMA copies
the whole UNet).

The learning rate: the variant's (``diffusion.learning_rate`` unless it sets one) times ``lr_scale``, 10 by
default: diffusers' examples train LoRA at 1e-4 where they fine-tune the whole UNet at 1e-5, and the presets'
learning rates are full fine-tune rates.

Composable with the levels of FairSkin: ``lora`` (plain), ``cbdm_lora``, ``fairskin_c_lora`` and
``fairskin_s_lora`` are specs with ``hooks={"lora": {}}``; a variant of another rank is a custom variant.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fairskin.methods.hooks import TrainingHook
from fairskin.methods.spec import VariantSpec

VERSION = 1
ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: load_lora_weights(folder) finds it
CHECKPOINT_FOLDER = "lora"  # a checkpoint's adapter (the UNet itself is the base's, not saved)
DEFAULT_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


class LoraSettings(BaseModel):
    """The adapters: ``rank`` r, ``alpha`` (None: r, as diffusers' example; the update is scaled by alpha / r),
    the UNet modules they wrap, their initialisation, and the learning-rate scale over the variant's rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rank: int = Field(4, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)
    init: Literal["gaussian", "kaiming"] = "gaussian"  # peft's init_lora_weights: "gaussian", or True (Kaiming)
    lr_scale: float = Field(10.0, gt=0)


class LoraAdapters(TrainingHook):
    """Adapters on a frozen UNet: :func:`add_lora` in ``configure_unet``; the adapter file in checkpoints and as
    the result."""

    Settings = LoraSettings
    keeps_ema = False
    adapter = True

    def configure_unet(self, unet) -> None:
        add_lora(unet, self.settings, seed=self.context.seed)

    def learning_rate(self, rate: float) -> float:
        return rate * self.settings.lr_scale

    def save_weights(self, unet, folder: Path) -> bool:
        save_adapter(unet, Path(folder) / CHECKPOINT_FOLDER)
        return True

    def load_weights(self, unet, folder: Path) -> bool:
        load_adapter(unet, Path(folder) / CHECKPOINT_FOLDER / ADAPTER_FILE)
        return True

    def export(self, unet, pipeline_folder: Path) -> None:
        save_adapter(unet, Path(pipeline_folder))

    def export_checkpoint(self, checkpoint: Path, pipeline_folder: Path) -> None:
        shutil.copyfile(Path(checkpoint) / CHECKPOINT_FOLDER / ADAPTER_FILE, Path(pipeline_folder) / ADAPTER_FILE)


def add_lora(unet, settings: LoraSettings, seed: int) -> None:
    """Freeze ``unet`` and add one adapter (peft's ``default``) to its ``settings.target_modules``; the adapters'
    initial weights come from a torch generator seeded by ``seed`` (the global RNG is left as it was)."""
    import torch
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        init_lora_weights="gaussian" if settings.init == "gaussian" else True,
        target_modules=list(settings.target_modules),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"lora: no UNet module matches target_modules {settings.target_modules}")


def adapter_state(unet) -> dict:
    """The adapters' weights of ``unet`` in diffusers' format (keys without the ``unet.`` prefix)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_adapter(unet, folder: Path) -> Path:
    """``folder/pytorch_lora_weights.safetensors`` (diffusers' LoRA format, loadable with ``load_lora_weights``)."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=adapter_state(unet), safe_serialization=True)
    return Path(folder) / ADAPTER_FILE


def load_adapter(unet, path: Path) -> None:
    """Load a saved adapter file into ``unet``, which :func:`add_lora` configured with the same settings; every
    adapter weight must be in the file (a missing or unexpected key names it)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"lora: no adapter file {path}")
    saved = {k.removeprefix("unet."): v for k, v in load_file(path).items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(saved), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", []) or []
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise ValueError(
            f"lora: {path} does not match the adapters: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )


HOOKS = {"lora": LoraAdapters}
METHODS = [
    VariantSpec(name="lora", weights="none", loss="dm", hooks={"lora": {}}),
    VariantSpec(name="cbdm_lora", weights="none", loss="cbdm", hooks={"lora": {}}),
    VariantSpec(name="fairskin_c_lora", weights="cbrs", loss="cbdm", hooks={"lora": {}}),
    VariantSpec(name="fairskin_s_lora", weights="sqrs", loss="cbdm", hooks={"lora": {}}),
]
