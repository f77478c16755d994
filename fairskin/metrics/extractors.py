"""Feature spaces of the generation metrics: the classifier as a torch-fidelity extractor, or Inception.

A :class:`FeatureSpace` names the torch-fidelity feature extractor that FID, KID, IS and
memorisation use (:mod:`fairskin.metrics.generation`). By default it is a transformers
``ViTForImageClassification`` (the reference classifier, or on synthetic data the independent
judge) registered with torch-fidelity under a name bound to its weights: "pre_logits" (the CLS
token after the final layernorm, (N, hidden)) for FID, KID and memorisation, "logits"
(N, num_labels) for IS. With a local Inception weights file torch-fidelity's
``inception-v3-compat`` is used instead (no download is ever attempted).

Images are uint8 arrays (N, H, W, 3), values 0..255; torch-fidelity receives them as uint8
(N, 3, H, W) tensors (:class:`UInt8Images`). Features come back as float32 (N, D) arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.metrics.features import classifier_forward as _classifier_forward

INCEPTION = "inception-v3-compat"

# name -> (model, image_size) of each registered classifier extractor. Strong references: a
# model stays alive while registered; a model with the same weights and size replaces the entry.
_BOUND_CLASSIFIERS: dict[str, tuple[Any, int]] = {}


# ----------------------------------------------------------------------------------------------
# The classifier as a torch-fidelity feature extractor
# ----------------------------------------------------------------------------------------------


def _make_extractor_class():
    """A ``FeatureExtractorBase`` subclass that looks its model up in ``_BOUND_CLASSIFIERS`` by name."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """Features of a bound ViT classifier: "pre_logits" (N, hidden) and "logits" (N, num_labels).

        torch-fidelity constructs it as ``cls(name, features_list, **all_calculate_metrics_kwargs)``
        and then calls ``requires_grad_(False)``, ``eval()`` and (with ``cuda=True``) ``cuda()`` on
        it. The model is deliberately *not* a registered submodule, so none of these touch the
        caller's model; inputs are moved to the model's device instead.
        """

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            if name not in _BOUND_CLASSIFIERS:
                raise KeyError(f"no classifier bound to feature extractor {name!r}")
            model, image_size = _BOUND_CLASSIFIERS[name]
            self.__dict__["_model"] = model  # bypass nn.Module registration (see class docstring)
            self.image_size = image_size

        @staticmethod
        def get_provided_features_list():
            return "pre_logits", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "pre_logits", "kid": "pre_logits", "prc": "pre_logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
            cls, logits = _classifier_forward(self._model, x, self.image_size)
            features = {"pre_logits": cls.to(x.device), "logits": logits.to(x.device)}
            return tuple(features[name] for name in self.features_list)  # order of the *requested* list

    return ClassifierFeatureExtractor


def weights_digest(model) -> str:
    """SHA-256 hex digest of a model's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def register_classifier_extractor(model, image_size: int) -> str:
    """Register ``model`` (a ``ViTForImageClassification``) with torch-fidelity; returns the extractor name.

    The name, ``fairskin-vit-<16 hex of the weights' sha256>-<image_size>px``, changes whenever
    the weights or the input size change, so torch-fidelity's feature cache (keyed by cache name
    and extractor name) never serves features of another model. Registering a model with the same
    weights and size again rebinds the name to the new object (torch-fidelity itself refuses a
    second registration of a name, so the class is registered once per name).
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    name = f"fairskin-vit-{weights_digest(model)[:16]}-{int(image_size)}px"
    _BOUND_CLASSIFIERS[name] = (model, int(image_size))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, _make_extractor_class())
    return name


@dataclass(frozen=True)
class FeatureSpace:
    """Which torch-fidelity feature extractor to use, and how to call it.

    ``name`` is the registered extractor name; ``kind`` is "reference-classifier",
    "judge-classifier" (the independent judge, trained on a fresh procedural set) or
    "inception-v3"; ``fidelity_kwargs`` are passed to every ``calculate_metrics`` call (the
    extractor name, and the weights path for Inception); ``cuda`` is torch-fidelity's device flag.
    ``model`` keeps a bound classifier alive (None for Inception).
    """

    name: str
    kind: str
    fidelity_kwargs: dict = field(default_factory=dict)
    cuda: bool = False
    model: Any = None

    @property
    def description(self) -> str:
        if self.kind == "inception-v3":
            return "inception-v3 (torch-fidelity inception-v3-compat, local weights)"
        if self.kind == "judge-classifier":
            return (
                "independent judge classifier trained on a fresh procedural set (ViT CLS token after the "
                "final layernorm), not Inception"
            )
        return "reference classifier (ViT CLS token after the final layernorm), not Inception"


CLASSIFIER_KINDS = ("reference-classifier", "judge-classifier")


def classifier_space(model, image_size: int, kind: str = "reference-classifier") -> FeatureSpace:
    """A classifier's feature space (the reference's, or the judge's with ``kind="judge-classifier"``):
    registers ``model`` and runs on its device."""
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"kind must be one of {CLASSIFIER_KINDS}, got {kind!r}")
    name = register_classifier_extractor(model, image_size)
    cuda = next(model.parameters()).device.type == "cuda"
    return FeatureSpace(name=name, kind=kind, fidelity_kwargs={"feature_extractor": name}, cuda=cuda, model=model)


def inception_space(weights_path: Path, cuda: bool | None = None) -> FeatureSpace:
    """torch-fidelity's ``inception-v3-compat`` loaded from a local weights file (never downloaded)."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path} (downloads are not attempted)")
    return FeatureSpace(
        name=INCEPTION,
        kind="inception-v3",
        fidelity_kwargs={"feature_extractor": INCEPTION, "feature_extractor_weights_path": str(path)},
        cuda=torch.cuda.is_available() if cuda is None else cuda,
    )


def feature_space(
    model, image_size: int, inception_weights_path: Path | None = None, kind: str = "reference-classifier"
) -> FeatureSpace:
    """Inception when a local weights path is given, else the classifier ``model`` (of ``kind``:
    the reference classifier, or on synthetic data the independent judge)."""
    if inception_weights_path is not None:
        return inception_space(inception_weights_path)
    return classifier_space(model, image_size, kind)


# ----------------------------------------------------------------------------------------------
# Arrays -> torch-fidelity inputs and features
# ----------------------------------------------------------------------------------------------


class UInt8Images(torch.utils.data.Dataset):
    """A torch Dataset over uint8 (N, H, W, 3) pixels, yielding uint8 (3, H, W) tensors."""

    def __init__(self, pixels: np.ndarray):
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3), got {pixels.dtype} {pixels.shape}")
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.pixels[i])).permute(2, 0, 1).contiguous()


def fidelity_kwargs(space: FeatureSpace, batch_size: int) -> dict:
    """Keyword arguments common to every torch-fidelity call in ``space`` with batches of ``batch_size`` images.

    ``save_cpu_ram=True`` keeps torch-fidelity's DataLoader in-process (otherwise it starts
    ``min(4, 2 * cpu_count)`` worker processes per call); ``verbose=False`` silences its stderr.
    """
    return dict(space.fidelity_kwargs, cuda=space.cuda, batch_size=batch_size, save_cpu_ram=True, verbose=False)


def space_features(
    space: FeatureSpace, pixels: np.ndarray, layer: str | None = None, batch_size: int = 256
) -> np.ndarray:
    """Features (N, D) float32 of uint8 (N, H, W, 3) pixels in ``space``; ``layer`` defaults to FID's.

    Runs torch-fidelity's own extractor and batching loop, so these are the features FID sees.
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    if len(pixels) == 0:
        raise ValueError("no images to extract features from")
    layer = layer or _fid_layer(space)
    extractor = create_feature_extractor(space.name, [layer], **fidelity_kwargs(space, batch_size))
    out = get_featuresdict_from_dataset(
        UInt8Images(pixels), extractor, batch_size, space.cuda, save_cpu_ram=True, verbose=False
    )
    return out[layer].numpy()


def _fid_layer(space: FeatureSpace) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[space.name].get_default_feature_layer_for_metric("fid")


def classifier_features(
    model, pixels: np.ndarray, image_size: int, batch_size: int = 256, layer: str = "pre_logits"
) -> np.ndarray:
    """Classifier features of uint8 (N, H, W, 3) pixels, float32.

    ``layer="pre_logits"``: the CLS token after the final layernorm, (N, hidden);
    ``layer="logits"``: (N, num_labels). Same conversion and code path as the torch-fidelity
    extractor, so these are the features FID and KID see.
    """
    if layer not in ("pre_logits", "logits"):
        raise ValueError(f"layer must be 'pre_logits' or 'logits', got {layer!r}")
    pixels = np.asarray(pixels)
    if len(pixels) == 0:
        width = model.config.hidden_size if layer == "pre_logits" else model.config.num_labels
        return np.zeros((0, width), np.float32)
    data = UInt8Images(pixels)
    out = []
    for i in range(0, len(data), batch_size):
        batch = torch.stack([data[j] for j in range(i, min(i + batch_size, len(data)))])
        cls, logits = _classifier_forward(model, batch, image_size)
        out.append((cls if layer == "pre_logits" else logits).cpu())
    return torch.cat(out).numpy()


def classifier_logits(model, pixels: np.ndarray, image_size: int, batch_size: int = 256) -> np.ndarray:
    """Classifier logits (N, num_labels) float32 of uint8 (N, H, W, 3) pixels."""
    return classifier_features(model, pixels, image_size, batch_size, layer="logits")
