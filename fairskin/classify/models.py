"""The downstream classifier: a transformers ViT, loaded from a folder/hub id or built tiny in code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fairskin.model_lock import one_model_at_a_time

TINY_VIT = dict(
    patch_size=8,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local folder nor allowed to be downloaded."""


@one_model_at_a_time
def build_classifier(model: str, labels: Sequence[str], image_size: int, allow_download: bool = False):
    """A ``ViTForImageClassification`` with ``len(labels)`` outputs.

    ``model="tiny"`` builds a small ViT in code (random weights; seed torch first). Otherwise
    ``model`` is a local folder (e.g. ViT-B/16 saved with ``save_pretrained``) or, with
    ``allow_download``, a hub id such as ``google/vit-base-patch16-224``; its head is replaced
    to fit ``labels``.
    """
    from transformers import ViTConfig, ViTForImageClassification

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    if model == "tiny":
        config = ViTConfig(
            image_size=image_size, num_labels=len(labels), id2label=id2label, label2id=label2id, **TINY_VIT
        )
        return ViTForImageClassification(config)
    if not Path(model).is_dir() and not allow_download:
        raise ModelNotFoundError(
            f"classifier.model {model!r} is not a local folder and downloads are off. Download it once "
            f"(e.g. `huggingface-cli download {model} --local-dir /models/vit`) and set "
            f"classifier.model=/models/vit, or set classifier.allow_download=true"
        )
    return ViTForImageClassification.from_pretrained(
        model,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        local_files_only=not allow_download,
    )


@one_model_at_a_time
def load_saved_classifier(folder: Path):
    """A classifier saved by :func:`save_classifier` (config.json + model.safetensors)."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder, local_files_only=True, use_safetensors=True)


def save_classifier(model, folder: Path) -> Path:
    """Save as a transformers folder with safetensors weights."""
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
