"""Generation metrics per subclass: FID, KID, IS and memorisation, through torch-fidelity.

A synthetic pool is judged subclass by subclass, (group, disease), against the real images of
the same subclass: FID and KID compare two sets of features, IS looks at the pool alone, and
memorisation asks whether generated images sit closer to a training image than real held-out
images do.

Feature space. By default the features come from our reference classifier (a transformers
``ViTForImageClassification``), registered with torch-fidelity as a feature extractor bound to
that model: "pre_logits" (the CLS token after the final layernorm, (N, hidden)) for FID, KID
and memorisation, "logits" (N, num_labels) for IS. Figures in that space are *not* comparable
with published Inception FIDs; the report's ``feature_extractor`` field says which space was
used. With a local Inception weights file (``inception_weights_path``) torch-fidelity's
``inception-v3-compat`` is used instead (no download is ever attempted).

On synthetic data the evaluate stage uses the independent *judge* classifier instead (trained on
a fresh procedural set, :mod:`fairskin.classify.judge`), so the space never saw the reference
images. Beside every FID: the real-vs-real floor (:func:`real_floor`: held-out real images against
the reference at the same N), pooled FIDs with the pool subsampled to the real mix
(:func:`pooled_summary`), and disease fidelity (:func:`disease_fidelity`: the judge's accuracy on
generated images over its accuracy on held-out real ones).

Images everywhere are uint8 arrays (N, H, W, 3), values 0..255; torch-fidelity receives them as
uint8 (N, 3, H, W) tensors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fairskin.metrics.features import classifier_forward as _classifier_forward

FID_VAR_DDOF = 1  # variances of FID over subclasses / groups are sample variances
KID_MAX_SUBSET = 1000  # torch-fidelity's default subset size, the cap of our adaptive rule
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


def _fidelity_kwargs(space: FeatureSpace, batch_size: int) -> dict:
    """Keyword arguments common to every torch-fidelity call.

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
    extractor = create_feature_extractor(space.name, [layer], **_fidelity_kwargs(space, batch_size))
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


# ----------------------------------------------------------------------------------------------
# One subclass: FID, KID (and optionally IS)
# ----------------------------------------------------------------------------------------------


def real_cache_name(extractor_name: str, sha256s: Sequence[str], subclass: str | Sequence[str]) -> str:
    """torch-fidelity cache name for one subclass's real images: ``real-<32 hex>``.

    Hashes the extractor name, the subclass label (a string or (group, disease)) and the *sorted*
    image (or shard) checksums, so the name identifies the set of images, whatever their order.
    torch-fidelity adds the extractor name and feature layer to the file names as well
    (``<cache_name>-<extractor>-features-<layer>.pt``, ``...-stat-fid-<layer>.pt``).
    """
    label = subclass if isinstance(subclass, str) else "\x1f".join(map(str, subclass))
    h = hashlib.sha256()
    for part in (extractor_name, label, *sorted(map(str, sha256s))):
        h.update(part.encode())
        h.update(b"\x1e")
    return f"real-{h.hexdigest()[:32]}"


def kid_subset_size_for(n_generated: int, n_real: int, requested: int | None = None) -> int:
    """KID subset size: ``min(requested or 1000, n_generated, n_real)``; must be >= 2.

    torch-fidelity raises unless the subset size is <= both set sizes, and its unbiased MMD
    divides by m (m - 1). When the size equals both set sizes every subset is the whole set,
    so KID's std is 0.
    """
    size = min(requested or KID_MAX_SUBSET, n_generated, n_real)
    if size < 2:
        raise ValueError(f"KID needs >= 2 images on each side, got {n_generated} generated and {n_real} real")
    return int(size)


def isc_splits_for(n: int) -> int:
    """IS splits: ``min(10, n // 2)``, at least 1, so every split holds >= 2 images."""
    return max(1, min(10, n // 2))


def subclass_metrics(
    generated: np.ndarray,
    real: np.ndarray,
    extractor: FeatureSpace,
    *,
    cache_name: str | None = None,
    cache_root: Path | None = None,
    kid_subset_size: int | None = None,
    isc: bool = False,
    batch_size: int = 128,
) -> dict:
    """FID and KID of one subclass's generated images against its real images.

    ``generated``: uint8 (N, H, W, 3); ``real``: uint8 (M, H, W, 3); both need >= 2 images
    (FID's covariance, KID's unbiased estimate). Returns ``fid`` (Frechet distance between the
    two feature Gaussians, in squared feature units; ~0 for identical sets), ``kid_mean``,
    ``kid_std`` (unbiased MMD^2 with torch-fidelity's cubic polynomial kernel, dimensionless, over
    100 subsets of size :func:`kid_subset_size_for`; slightly negative values are valid and mean
    "indistinguishable", e.g. a set against itself), ``kid_subset_size``, ``n_generated``,
    ``n_real``, and with ``isc=True`` also ``is_mean`` and ``is_std`` of the generated images.

    With ``cache_name`` (see :func:`real_cache_name`), the real side's features and FID
    statistics are cached by torch-fidelity under ``cache_root`` (default
    ``$TORCH_HOME/fidelity_cache``) and read back on the next call with the same name, *without
    looking at* ``real``: the name must identify the images.
    """
    import torch_fidelity

    n_gen, n_real = len(generated), len(real)
    if n_gen < 2 or n_real < 2:
        raise ValueError(f"FID/KID need >= 2 images on each side, got {n_gen} generated and {n_real} real")
    kwargs = _fidelity_kwargs(extractor, batch_size)
    subset = kid_subset_size_for(n_gen, n_real, kid_subset_size)
    result = torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated),
        input2=UInt8Images(real),
        fid=True,
        kid=True,
        isc=isc,
        kid_subset_size=subset,
        isc_splits=isc_splits_for(n_gen),
        cache=cache_name is not None,
        input2_cache_name=cache_name,
        cache_root=None if cache_root is None else str(cache_root),
        **kwargs,
    )
    out = {
        "fid": result[torch_fidelity.KEY_METRIC_FID],
        "kid_mean": result[torch_fidelity.KEY_METRIC_KID_MEAN],
        "kid_std": result[torch_fidelity.KEY_METRIC_KID_STD],
        "kid_subset_size": subset,
        "n_generated": n_gen,
        "n_real": n_real,
    }
    if isc:
        out["is_mean"] = result[torch_fidelity.KEY_METRIC_ISC_MEAN]
        out["is_std"] = result[torch_fidelity.KEY_METRIC_ISC_STD]
    return out


def inception_score(pixels: np.ndarray, extractor: FeatureSpace, batch_size: int = 128) -> dict[str, float]:
    """IS of uint8 (N, H, W, 3) images with the extractor's IS layer (the classifier's logits).

    ``isc_splits = min(10, N // 2)``; returns ``is_mean`` and ``is_std`` over the splits
    (dimensionless, >= 1; with the reference classifier its maximum is the number of diseases).
    NaN for an empty set.
    """
    import torch_fidelity

    if len(pixels) == 0:
        return {"is_mean": math.nan, "is_std": math.nan}
    result = torch_fidelity.calculate_metrics(
        input1=UInt8Images(pixels),
        isc=True,
        isc_splits=isc_splits_for(len(pixels)),
        cache=False,
        **_fidelity_kwargs(extractor, batch_size),
    )
    return {"is_mean": result[torch_fidelity.KEY_METRIC_ISC_MEAN], "is_std": result[torch_fidelity.KEY_METRIC_ISC_STD]}


# ----------------------------------------------------------------------------------------------
# Memorisation
# ----------------------------------------------------------------------------------------------


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance (Q,) from each query (Q, D) to its nearest reference (R, D), in chunks of rows.

    Units are those of the features. NaN for every query when there are no references.
    """
    if len(queries) == 0:
        return np.zeros(0, np.float64)
    if len(references) == 0:
        return np.full(len(queries), np.nan)
    ref = torch.as_tensor(np.asarray(references, np.float64))
    out = [
        torch.cdist(torch.as_tensor(np.asarray(queries[i : i + chunk], np.float64)), ref).min(dim=1).values
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(out).numpy()


def _fraction_within(distances: np.ndarray, threshold: float) -> float:
    """Share of distances <= threshold; NaN when any distance or the threshold is undefined."""
    if len(distances) == 0 or not math.isfinite(threshold) or not np.isfinite(distances).all():
        return math.nan
    return float(np.mean(distances <= threshold))


def memorisation(
    gen_features: np.ndarray,
    gen_subclass: np.ndarray,
    train_features: np.ndarray,
    train_subclass: np.ndarray,
    heldout_features: np.ndarray,
    heldout_subclass: np.ndarray,
    *,
    quantile: float = 0.05,
) -> pd.DataFrame:
    """Per subclass, the share of generated images closer to a training image than real images are.

    Features: (G, D), (T, D), (H, D); subclass labels: (G,), (T,), (H,) of any hashable kind.
    For every generated image, the Euclidean distance to its nearest *training* image of the same
    subclass; the same for every held-out real image (val/test). The threshold is the
    ``quantile`` (5th percentile) of the held-out-to-train distances of that subclass, or of all
    subclasses pooled when a subclass has < 2 held-out images (``threshold_source`` = "global").
    ``memorised_fraction`` = share of generated images with distance <= threshold (<= so that
    exact copies count even when real near-duplicates put the threshold at 0).

    One row per subclass with generated images: ``subclass``, ``n_generated``, ``n_train``,
    ``n_heldout``, ``threshold``, ``threshold_source``, ``memorised_fraction``,
    ``median_gen_to_train``, ``median_heldout_to_train`` (distances in feature units; NaN where
    a subclass has no training images).
    """
    gen_subclass, train_subclass, heldout_subclass = map(np.asarray, (gen_subclass, train_subclass, heldout_subclass))
    gen_features, train_features, heldout_features = (
        np.asarray(f, np.float64) for f in (gen_features, train_features, heldout_features)
    )
    labels = list(pd.unique(gen_subclass))
    heldout_d = {
        s: nearest_distances(heldout_features[heldout_subclass == s], train_features[train_subclass == s])
        for s in pd.unique(heldout_subclass)
    }
    pooled = np.concatenate([d for d in heldout_d.values()]) if heldout_d else np.zeros(0)
    pooled = pooled[np.isfinite(pooled)]
    global_threshold = float(np.quantile(pooled, quantile)) if len(pooled) else math.nan
    rows = []
    for s in labels:
        gen_d = nearest_distances(gen_features[gen_subclass == s], train_features[train_subclass == s])
        held = heldout_d.get(s, np.zeros(0))
        own = len(held) >= 2 and np.isfinite(held).all()
        threshold = float(np.quantile(held, quantile)) if own else global_threshold
        rows.append(
            {
                "subclass": s,
                "n_generated": len(gen_d),
                "n_train": int((train_subclass == s).sum()),
                "n_heldout": len(held),
                "threshold": threshold,
                "threshold_source": "subclass" if own else "global",
                "memorised_fraction": _fraction_within(gen_d, threshold),
                "median_gen_to_train": float(np.median(gen_d)),
                "median_heldout_to_train": float(np.median(held)) if len(held) else math.nan,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# The whole pool: per subclass, per group, overall
# ----------------------------------------------------------------------------------------------


@dataclass
class GenerationReport:
    """Generation metrics of one pool.

    ``per_subclass``: one row per (group, disease) with ``fid``, ``kid_mean``, ``kid_std``,
    ``kid_subset_size``, ``n_generated``, ``n_real`` (and memorisation columns when held-out
    images were given). ``summary``: flat keys, see :func:`generation_report`.
    """

    per_subclass: pd.DataFrame
    summary: dict[str, Any]


def _weighted(values: pd.Series, weights: pd.Series) -> float:
    ok = values.notna() & (weights > 0)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else math.nan


def _sample_var(values: Sequence[float]) -> float:
    values = np.asarray([v for v in values if np.isfinite(v)], float)
    return float(np.var(values, ddof=FID_VAR_DDOF)) if len(values) > FID_VAR_DDOF else math.nan


def summarise_subclasses(per_subclass: pd.DataFrame, groups: Sequence[str]) -> dict[str, float]:
    """Group and overall FID/KID from per-subclass rows (columns group, fid, kid_mean, n_real).

    ``fid_<group>``, ``kid_<group>``: mean over the group's subclasses weighted by ``n_real``
    (the group's real disease mixture). ``fid_mean``, ``kid_mean``: unweighted mean over
    subclasses, so a balanced generator is not penalised for its balance. ``fid_var_subclass``
    and ``fid_var_group``: sample variances (ddof=1, ``fid_var_ddof``) of the per-subclass and
    per-group FIDs. Rows with NaN FID (not evaluated) are left out of every figure.
    """
    out: dict[str, float] = {}
    for g in groups:
        rows = per_subclass[per_subclass["group"] == g]
        out[f"fid_{g}"] = _weighted(rows["fid"], rows["n_real"])
        out[f"kid_{g}"] = _weighted(rows["kid_mean"], rows["n_real"])
    out["fid_mean"] = float(per_subclass["fid"].mean())
    out["kid_mean"] = float(per_subclass["kid_mean"].mean())
    out["fid_var_subclass"] = _sample_var(per_subclass["fid"])
    out["fid_var_group"] = _sample_var([out[f"fid_{g}"] for g in groups])
    out["fid_var_ddof"] = FID_VAR_DDOF
    out["n_subclasses_evaluated"] = int(per_subclass["fid"].notna().sum())
    return out


def _subclass_rows(meta: pd.DataFrame, group: str, disease: str) -> np.ndarray:
    return np.flatnonzero((meta["group"].to_numpy() == group) & (meta["disease"].to_numpy() == disease))


def _image_checksums(pixels: np.ndarray, meta: pd.DataFrame, rows: np.ndarray) -> list[str]:
    if "sha256" in meta.columns:
        return [str(s) for s in meta["sha256"].to_numpy()[rows]]
    return [hashlib.sha256(np.ascontiguousarray(pixels[i]).tobytes()).hexdigest() for i in rows]


def _per_subclass(
    pool_pixels,
    pool_meta,
    real_pixels,
    real_meta,
    groups,
    diseases,
    extractor,
    cache_root,
    real_checksums,
    kid_subset_size,
) -> pd.DataFrame:
    rows = []
    for g in groups:
        for d in diseases:
            gen_rows, real_rows = _subclass_rows(pool_meta, g, d), _subclass_rows(real_meta, g, d)
            row = {
                "group": g,
                "disease": d,
                "fid": math.nan,
                "kid_mean": math.nan,
                "kid_std": math.nan,
                "kid_subset_size": 0,
                "n_generated": len(gen_rows),
                "n_real": len(real_rows),
            }
            if len(gen_rows) >= 2 and len(real_rows) >= 2:  # else left NaN: not evaluated
                cache_name = None
                if cache_root is not None:
                    sums = _image_checksums(real_pixels, real_meta, real_rows) + list(real_checksums or [])
                    cache_name = real_cache_name(extractor.name, sums, (g, d))
                row.update(
                    subclass_metrics(
                        pool_pixels[gen_rows],
                        real_pixels[real_rows],
                        extractor,
                        cache_name=cache_name,
                        cache_root=cache_root,
                        kid_subset_size=kid_subset_size,
                    )
                )
            rows.append(row)
    return pd.DataFrame(rows)


class _Features:
    """Features of each image array in one feature space, extracted once per array object."""

    def __init__(self, space: FeatureSpace):
        self.space, self._done = space, {}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        key = id(pixels)
        if key not in self._done:
            self._done[key] = (pixels, space_features(self.space, pixels))  # keeps the array alive: ids stay unique
        return self._done[key][1]


def _memorisation_columns(
    per_subclass, pool_pixels, pool_meta, train_pixels, train_meta, heldout_pixels, heldout_meta, features
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Join memorisation per subclass onto the table; summary share over all generated images, per group."""
    table = memorisation(
        features(pool_pixels),
        _codes(pool_meta),
        features(train_pixels),
        _codes(train_meta),
        features(heldout_pixels),
        _codes(heldout_meta),
    )
    table[["group", "disease"]] = table["subclass"].str.split("\x1f", expand=True)
    table = table.drop(columns=["subclass", "n_generated"])
    merged = per_subclass.merge(table, on=["group", "disease"], how="left")
    summary = {"memorised_fraction": _weighted(merged["memorised_fraction"], merged["n_generated"])}
    for g in per_subclass["group"].unique():
        rows = merged[merged["group"] == g]
        summary[f"memorised_fraction_{g}"] = _weighted(rows["memorised_fraction"], rows["n_generated"])
    return merged, summary


def generation_report(
    pool_pixels: np.ndarray,
    pool_meta: pd.DataFrame,
    real_pixels: np.ndarray,
    real_meta: pd.DataFrame,
    groups: Sequence[str],
    diseases: Sequence[str],
    extractor: FeatureSpace,
    *,
    cache_root: Path | None = None,
    real_checksums: Sequence[str] | None = None,
    heldout_pixels: np.ndarray | None = None,
    heldout_meta: pd.DataFrame | None = None,
    train_pixels: np.ndarray | None = None,
    train_meta: pd.DataFrame | None = None,
    kid_subset_size: int | None = None,
    isc: bool = True,
    floor_pixels: np.ndarray | None = None,
    floor_meta: pd.DataFrame | None = None,
    pooled: bool = True,
    seed: int = 0,
) -> GenerationReport:
    """FID, KID, IS and memorisation of a synthetic pool, per subclass, per group and overall.

    Inputs: ``pool_pixels`` uint8 (N, H, W, 3) with ``pool_meta`` (N rows: group, disease);
    ``real_pixels`` uint8 (M, H, W, 3) with ``real_meta`` (M rows: group, disease, optional
    sha256), the real images each subclass is compared with (the train split by default).

    Per subclass (``per_subclass``): FID and KID of the pool's images of that (group, disease)
    against the real ones, ``n_generated``, ``n_real``. Subclasses with < 2 images on either
    side are listed with NaN figures and left out of the aggregates.

    Summary (flat keys):
    - ``fid_<group>``, ``kid_<group>``: the group's subclass figures averaged with weights
      ``n_real`` (the group's real disease mixture);
    - ``fid_mean``, ``kid_mean``: the unweighted mean over subclasses: every subclass counts the
      same, so a generator that balances the subclasses is not penalised for its balance;
    - ``fid_var_subclass`` (over the 15 subclasses) and ``fid_var_group`` (over the 3 group
      figures): sample variances, ddof=1, recorded as ``fid_var_ddof``. The paper reports FID
      variance (e.g. 276.63) without saying whether it is over subclasses (section 4.1) or over
      groups (section 4.5), nor the ddof; both are given here, and neither is comparable with an
      Inception-space figure unless ``feature_extractor`` says Inception;
    - ``is_mean``, ``is_std`` over the whole pool and ``is_mean_<group>``, ``is_std_<group>``
      (IS layer of the extractor: the classifier's logits, or Inception's), when ``isc``;
    - ``memorised_fraction`` (share of all generated images) and ``memorised_fraction_<group>``,
      when ``heldout_pixels``/``heldout_meta`` are given; the training images default to
      ``real_pixels``/``real_meta`` (see :func:`memorisation`);
    - real-vs-real floors (:func:`real_floor`), when ``floor_pixels``/``floor_meta`` (real images
      outside the reference, e.g. val + test) are given: per subclass ``fid_floor``, ``kid_floor``,
      ``floor_method``, ``floor_n_query``, ``floor_n_reference`` and ``fid_floor_corrected``
      (``fid - fid_floor``); summary :func:`summarise_floors` (``fid_floor_mean``,
      ``kid_floor_mean``, ``fid_floor_<group>``, ``kid_floor_<group>``,
      ``fid_mean_floor_corrected``, ``fid_var_subclass_floor_corrected``);
    - with ``pooled``, the pooled figures of :func:`pooled_summary` (``fid_pooled_<group>``,
      ``fid_pooled_overall``, ...), each pool subsampled to the real mix with ``seed``;
    - ``feature_extractor``: the feature space's description; ``feature_extractor_name``.

    ``cache_root`` turns on torch-fidelity's cache for the real side: a subclass's cache name is
    :func:`real_cache_name` of the extractor, the subclass and its images' ``sha256`` (hashed
    from the pixels when the column is missing) plus ``real_checksums`` (e.g. shard checksums).
    """
    per_subclass = _per_subclass(
        pool_pixels,
        pool_meta,
        real_pixels,
        real_meta,
        groups,
        diseases,
        extractor,
        cache_root,
        real_checksums,
        kid_subset_size,
    )
    summary: dict[str, Any] = summarise_subclasses(per_subclass, groups)
    if isc:
        summary.update(inception_score(pool_pixels, extractor))
        for g in groups:
            part = inception_score(pool_pixels[pool_meta["group"].to_numpy() == g], extractor)
            summary[f"is_mean_{g}"], summary[f"is_std_{g}"] = part["is_mean"], part["is_std"]
    features = _Features(extractor)
    if heldout_pixels is not None and heldout_meta is not None and len(heldout_pixels):
        train_pixels = real_pixels if train_pixels is None else train_pixels
        train_meta = real_meta if train_meta is None else train_meta
        per_subclass, mem = _memorisation_columns(
            per_subclass, pool_pixels, pool_meta, train_pixels, train_meta, heldout_pixels, heldout_meta, features
        )
        summary.update(mem)
    if floor_pixels is not None and floor_meta is not None:
        floor_features = features(floor_pixels) if len(floor_pixels) else np.zeros((0, 1), np.float32)
        floors = floor_table(
            features(real_pixels),
            real_meta,
            floor_features,
            floor_meta,
            per_subclass[["group", "disease", "n_generated"]],
            seed=seed,
            kid_subset_size=kid_subset_size,
        )
        per_subclass = per_subclass.merge(floors, on=["group", "disease"], how="left")
        per_subclass["fid_floor_corrected"] = per_subclass["fid"] - per_subclass["fid_floor"]
        summary.update(summarise_floors(per_subclass, groups))
    if pooled:
        summary.update(
            pooled_summary(
                features(pool_pixels),
                pool_meta,
                features(real_pixels),
                real_meta,
                groups,
                seed=seed,
                kid_subset_size=kid_subset_size,
            )
        )
    summary["feature_extractor"] = extractor.description
    summary["feature_extractor_name"] = extractor.name
    return GenerationReport(per_subclass=per_subclass, summary=summary)


# ----------------------------------------------------------------------------------------------
# From features: FID/KID of any two feature sets, real-vs-real floors, pooled FID
# ----------------------------------------------------------------------------------------------


def features_metrics(
    query: np.ndarray, reference: np.ndarray, kid_subset_size: int | None = None, rng_seed: int = 2020
) -> dict[str, float]:
    """FID and KID of two feature sets (N, D) and (M, D), with torch-fidelity's own maths.

    The same figures as :func:`subclass_metrics` gives for the images these features came from
    (torch-fidelity's ``fid_features_to_statistics`` / ``fid_statistics_to_metric`` and
    ``kid_features_to_metric``, KID subset size :func:`kid_subset_size_for`, its default 100
    subsets and seed 2020); used where one extraction serves many comparisons (floors, pools).
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    q = torch.as_tensor(np.asarray(query, np.float32))
    r = torch.as_tensor(np.asarray(reference, np.float32))
    subset = kid_subset_size_for(len(q), len(r), kid_subset_size)
    fid = fid_statistics_to_metric(fid_features_to_statistics(q), fid_features_to_statistics(r), verbose=False)
    kid = kid_features_to_metric(q, r, kid_subset_size=subset, verbose=False, rng_seed=rng_seed)
    return {
        "fid": float(fid[KEY_METRIC_FID]),
        "kid_mean": float(kid[KEY_METRIC_KID_MEAN]),
        "kid_std": float(kid[KEY_METRIC_KID_STD]),
        "kid_subset_size": subset,
        "n_generated": len(q),
        "n_real": len(r),
    }


def real_floor(
    reference: np.ndarray, heldout: np.ndarray, n: int, *, seed: int = 0, kid_subset_size: int | None = None
) -> dict[str, Any]:
    """The real-vs-real floor of one subclass: what a perfect generator of ``n`` images would score.

    ``reference`` (M, D): features of the real images the generated ones are compared with;
    ``heldout`` (H, D): features of real images of the same subclass that are not in the
    reference. With ``H >= n``, ``n`` held-out images (seeded draw) against the whole reference
    (``floor_method`` "heldout"): the same N on both sides as the generated comparison. With
    fewer held-out images, the reference is split into two random halves and up to ``n`` images
    of one half are compared with the other half ("split-half": smaller sets on both sides, so
    this floor is, if anything, too high). NaN where either side would hold < 2 images.

    FID is biased upwards at small N (Chong & Forsyth 2020), so the FID floor is well above 0
    for small subclasses; the unbiased KID floor is ~0 (and may be slightly negative): assert
    with KID. Returns ``fid_floor``, ``kid_floor``, ``kid_floor_std``, ``floor_method``,
    ``floor_n_query``, ``floor_n_reference``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0F1008]))
    reference, heldout = np.asarray(reference), np.asarray(heldout)
    n = int(n)
    if n >= 2 and len(heldout) >= n:
        query, ref, method = heldout[np.sort(rng.choice(len(heldout), n, replace=False))], reference, "heldout"
    else:
        order = rng.permutation(len(reference))
        half = len(reference) // 2
        query, ref, method = (
            reference[np.sort(order[: min(half, max(n, 0))])],
            reference[np.sort(order[half:])],
            "split-half",
        )
    out: dict[str, Any] = {
        "fid_floor": math.nan,
        "kid_floor": math.nan,
        "kid_floor_std": math.nan,
        "floor_method": method,
        "floor_n_query": len(query),
        "floor_n_reference": len(ref),
    }
    if len(query) >= 2 and len(ref) >= 2:
        m = features_metrics(query, ref, kid_subset_size)
        out.update(fid_floor=m["fid"], kid_floor=m["kid_mean"], kid_floor_std=m["kid_std"])
    return out


def mix_subsample(pool_keys: Sequence, real_keys: Sequence, seed: int = 0) -> np.ndarray:
    """Row indices (sorted) of the largest subsample of a pool whose key mix equals the real set's.

    Keys are any hashable labels (a disease, or a "group/disease" code). Over the keys present in
    both sets, the real mix is ``p_k = real_k / R``; the subsample has ``M = min_k floor(pool_k / p_k)``
    rows, ``M p_k`` of key ``k`` (largest-remainder rounding), drawn without replacement by a
    generator seeded with ``seed``. A pool that already has the real mix is returned whole.
    Keys of the pool absent from the real set get no rows.
    """
    pool_keys, real_keys = np.asarray(pool_keys, dtype=object), np.asarray(real_keys, dtype=object)
    real_counts = pd.Series(real_keys).value_counts()
    pool_counts = pd.Series(pool_keys).value_counts()
    keys = [k for k in real_counts.index if k in pool_counts.index]
    if not keys:
        return np.zeros(0, np.int64)
    r = {k: int(real_counts[k]) for k in keys}
    p = {k: int(pool_counts[k]) for k in keys}
    total = sum(r.values())
    size = min(p[k] * total // r[k] for k in keys)  # floor(pool_k / p_k), in integers
    exact = {k: size * r[k] / total for k in keys}
    target = {k: min(p[k], int(math.floor(exact[k]))) for k in keys}
    for k in sorted(keys, key=lambda k: (-(exact[k] - math.floor(exact[k])), str(k)))[: size - sum(target.values())]:
        target[k] = min(p[k], target[k] + 1)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9001ED]))
    rows = [rng.choice(np.flatnonzero(pool_keys == k), target[k], replace=False) for k in sorted(keys, key=str)]
    return np.sort(np.concatenate(rows).astype(np.int64))


def pooled_metrics(
    pool_features: np.ndarray,
    pool_keys: Sequence,
    real_features: np.ndarray,
    real_keys: Sequence,
    *,
    match_mix: bool = True,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> dict[str, Any]:
    """FID/KID of a whole pool (no subcategory distinction) against all the real images.

    With ``match_mix`` (the default) the pool is first subsampled to the real set's key mix
    (:func:`mix_subsample`), so a generator that balances the subclasses is compared with the
    real distribution it would have to match, not penalised for its balance. NaN with < 2 rows
    on either side. Returns ``fid``, ``kid_mean``, ``kid_std``, ``n_generated`` (rows used),
    ``n_real``.
    """
    rows = mix_subsample(pool_keys, real_keys, seed) if match_mix else np.arange(len(pool_features))
    if len(rows) < 2 or len(real_features) < 2:
        return {
            "fid": math.nan,
            "kid_mean": math.nan,
            "kid_std": math.nan,
            "n_generated": len(rows),
            "n_real": len(real_features),
        }
    out = features_metrics(np.asarray(pool_features)[rows], real_features, kid_subset_size)
    out.pop("kid_subset_size")
    return out


def _codes(meta: pd.DataFrame) -> np.ndarray:
    return (meta["group"].astype(str) + "\x1f" + meta["disease"].astype(str)).to_numpy()


def pooled_summary(
    pool_features: np.ndarray,
    pool_meta: pd.DataFrame,
    real_features: np.ndarray,
    real_meta: pd.DataFrame,
    groups: Sequence[str],
    *,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> dict[str, float]:
    """The paper's Table 2 pooled figures, each pool subsampled to the real mix (seeded).

    ``fid_pooled_<group>`` / ``kid_pooled_<group>``: the group's generated images (disease mix
    matched to the group's real images) against all the group's real images;
    ``fid_pooled_overall`` / ``kid_pooled_overall``: every generated image ((group, disease) mix
    matched) against every real image; ``n_pooled_<group>``, ``n_pooled_overall``: images used.
    """
    out: dict[str, float] = {}
    pool_group, real_group = pool_meta["group"].to_numpy(), real_meta["group"].to_numpy()
    for g in groups:
        p, r = pool_group == g, real_group == g
        m = pooled_metrics(
            pool_features[p],
            pool_meta["disease"].to_numpy()[p],
            real_features[r],
            real_meta["disease"].to_numpy()[r],
            seed=seed,
            kid_subset_size=kid_subset_size,
        )
        out[f"fid_pooled_{g}"], out[f"kid_pooled_{g}"], out[f"n_pooled_{g}"] = m["fid"], m["kid_mean"], m["n_generated"]
    m = pooled_metrics(
        pool_features, _codes(pool_meta), real_features, _codes(real_meta), seed=seed, kid_subset_size=kid_subset_size
    )
    out["fid_pooled_overall"], out["kid_pooled_overall"], out["n_pooled_overall"] = (
        m["fid"],
        m["kid_mean"],
        m["n_generated"],
    )
    return out


def floor_table(
    real_features: np.ndarray,
    real_meta: pd.DataFrame,
    heldout_features: np.ndarray,
    heldout_meta: pd.DataFrame,
    n_generated: pd.DataFrame,
    *,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> pd.DataFrame:
    """:func:`real_floor` for every row of ``n_generated`` (columns group, disease, n_generated).

    Each subclass gets its own seed (``seed``, row number), so floors do not share draws.
    """
    real_codes, held_codes = _codes(real_meta), _codes(heldout_meta)
    rows = []
    for i, r in enumerate(n_generated.itertuples(index=False)):
        code = f"{r.group}\x1f{r.disease}"
        floor = real_floor(
            real_features[real_codes == code],
            heldout_features[held_codes == code],
            int(r.n_generated),
            seed=int(seed) * 1000 + i,
            kid_subset_size=kid_subset_size,
        )
        rows.append({"group": r.group, "disease": r.disease, **floor})
    return pd.DataFrame(rows)


def summarise_floors(per_subclass: pd.DataFrame, groups: Sequence[str]) -> dict[str, float]:
    """Floor figures from per-subclass rows (columns group, fid, fid_floor, kid_floor, n_real).

    ``fid_floor_<group>`` / ``kid_floor_<group>``: weighted by ``n_real`` like ``fid_<group>``;
    ``fid_floor_mean`` / ``kid_floor_mean``: unweighted over subclasses like ``fid_mean``;
    ``fid_mean_floor_corrected``: mean of ``fid - fid_floor``; ``fid_var_subclass_floor_corrected``:
    sample variance (ddof=1) over subclasses of ``fid - fid_floor``, the part of the spread that
    the subclasses' sizes (FID's small-N bias) do not explain.
    """
    out: dict[str, float] = {}
    evaluated = per_subclass[per_subclass["fid"].notna()]
    for g in groups:
        rows = evaluated[evaluated["group"] == g]
        out[f"fid_floor_{g}"] = _weighted(rows["fid_floor"], rows["n_real"])
        out[f"kid_floor_{g}"] = _weighted(rows["kid_floor"], rows["n_real"])
    corrected = evaluated["fid"] - evaluated["fid_floor"]
    out["fid_floor_mean"] = float(evaluated["fid_floor"].mean())
    out["kid_floor_mean"] = float(evaluated["kid_floor"].mean())
    out["fid_mean_floor_corrected"] = float(corrected.mean())
    out["fid_var_subclass_floor_corrected"] = _sample_var(corrected)
    return out


# ----------------------------------------------------------------------------------------------
# Disease fidelity: a judge classifier on generated vs held-out real images (GAN-test)
# ----------------------------------------------------------------------------------------------


def judge_predictions(
    model, pixels: np.ndarray, image_size: int, diseases: Sequence[str], batch_size: int = 256
) -> np.ndarray:
    """The judge's predicted disease names (N,) for uint8 (N, H, W, 3) pixels (argmax of its logits).

    ``diseases`` are the judge's labels in output order (``model.config.id2label``).
    """
    if len(pixels) == 0:
        return np.zeros(0, dtype=object)
    logits = classifier_logits(model, pixels, image_size, batch_size)
    return np.asarray(list(diseases), dtype=object)[logits.argmax(1)]


def judge_accuracy(
    predicted: Sequence[str], meta: pd.DataFrame, groups: Sequence[str], diseases: Sequence[str]
) -> pd.DataFrame:
    """Per (group, disease): ``n`` images, ``correct`` (predicted == the prompted / true disease), ``accuracy``
    (NaN with no images). One row per subclass of ``groups`` x ``diseases``, in that order."""
    predicted = np.asarray(predicted, dtype=object)
    group, disease = meta["group"].to_numpy(), meta["disease"].to_numpy()
    rows = []
    for g in groups:
        for d in diseases:
            hit = (group == g) & (disease == d)
            n, correct = int(hit.sum()), int((predicted[hit] == d).sum())
            rows.append(
                {"group": g, "disease": d, "n": n, "correct": correct, "accuracy": correct / n if n else math.nan}
            )
    return pd.DataFrame(rows)


def _ratio(num: float, den: float) -> float:
    return num / den if np.isfinite(num) and np.isfinite(den) and den > 0 else math.nan


def disease_fidelity(
    generated: pd.DataFrame, real: pd.DataFrame, groups: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Disease fidelity from two :func:`judge_accuracy` tables (generated pool, held-out real).

    Per subclass: ``judge_accuracy_generated``, ``judge_accuracy_real``, ``n_judge_generated``,
    ``n_judge_real`` and ``disease_fidelity`` = generated / real accuracy (NaN where either side
    has no images or the real accuracy is 0). 1 means the judge recognises the generated disease
    as well as it recognises real images of the subclass.

    Summary: over the subclasses measured on both sides, ``judge_accuracy_generated`` and
    ``judge_accuracy_real`` are unweighted means of the subclass accuracies (so the pool's and the
    real set's different subclass mixes do not enter) and ``disease_fidelity`` is their ratio;
    the same per group (``judge_accuracy_generated_<group>``, ``judge_accuracy_real_<group>``,
    ``disease_fidelity_<group>``); ``disease_fidelity_worst_group``: the smallest group figure.
    A ratio of means, not a mean of ratios: a subclass with few held-out images and a near-zero
    real accuracy cannot blow it up.
    """
    table = (
        generated[["group", "disease", "n", "accuracy"]]
        .rename(columns={"n": "n_judge_generated", "accuracy": "judge_accuracy_generated"})
        .merge(
            real[["group", "disease", "n", "accuracy"]].rename(
                columns={"n": "n_judge_real", "accuracy": "judge_accuracy_real"}
            ),
            on=["group", "disease"],
            how="left",
        )
    )
    table["disease_fidelity"] = [
        _ratio(a, b) for a, b in zip(table["judge_accuracy_generated"], table["judge_accuracy_real"])
    ]
    both = table[table["judge_accuracy_generated"].notna() & table["judge_accuracy_real"].notna()]

    def means(rows: pd.DataFrame) -> tuple[float, float]:
        if not len(rows):
            return math.nan, math.nan
        return float(rows["judge_accuracy_generated"].mean()), float(rows["judge_accuracy_real"].mean())

    summary: dict[str, float] = {}
    gen_acc, real_acc = means(both)
    summary.update(
        judge_accuracy_generated=gen_acc, judge_accuracy_real=real_acc, disease_fidelity=_ratio(gen_acc, real_acc)
    )
    per_group = []
    for g in groups:
        gen_g, real_g = means(both[both["group"] == g])
        summary[f"judge_accuracy_generated_{g}"], summary[f"judge_accuracy_real_{g}"] = gen_g, real_g
        summary[f"disease_fidelity_{g}"] = _ratio(gen_g, real_g)
        per_group.append(summary[f"disease_fidelity_{g}"])
    finite = [v for v in per_group if np.isfinite(v)]
    summary["disease_fidelity_worst_group"] = float(min(finite)) if finite else math.nan
    return table, summary
