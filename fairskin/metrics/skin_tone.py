"""Skin-tone fidelity of generated images: the individual typology angle (ITA) of healthy skin.

Does an image prompted for a group (e.g. "African", Fitzpatrick V-VI) show that group's skin
tone? Each image gets one ITA, measured on its healthy skin (the lesion left out), and the
generated ITAs of a group are compared with the ITAs of the group's real images.

Units and shapes
- images: uint8 ``(N, H, W, 3)`` sRGB, values 0..255 (one image: ``(H, W, 3)``);
- CIELAB: float32 ``(..., 3)`` = (L*, a*, b*), D65 white, 2 degree observer, L* in 0..100;
- ITA: degrees, ``ITA = atan2(L* - 50, b*) * 180 / pi``. ``atan2`` keeps the quadrant, so a
  pixel with b* <= 0 (grey, bluish) gets |ITA| >= 90 instead of the sign flip that
  ``arctan((L* - 50) / b*)`` would give. For skin (b* > 0) both agree: ITA > 55 very light,
  41..55 light, 28..41 intermediate, 10..28 tan, -30..10 brown, < -30 dark (Chardon et al. 1991).

sRGB -> CIELAB is ``skimage.color.rgb2lab`` (scikit-image), on float32 input in [0, 1].

Healthy skin: the skin-colour mode (rule ``"mode"``, the default)
    Lesions in this data set (``fairskin.data.synthetic``; dermatology photographs alike) are
    mostly central blobs that are redder (erythema, violaceous papules), darker (crust,
    ulcer, pigment) or whiter (scale, pearly nodules) than the skin around them, and their
    edges often fade into it (allergic contact dermatitis: a soft patch covering up to three
    quarters of the frame). Healthy skin is the densest colour cluster of the frame, so its colour is
    found as the mode of the pixel colours by mean shift:

    1. start from the median colour of the pixels outside the central disc of radius 0.5
       (in half-widths: the pixels farthest from a centred lesion, ~80 % of the frame);
    2. iterate ``c <- sum_i k_i x_i / sum_i k_i`` with a Gaussian kernel
       ``k_i = exp(-|x_i - c|^2 / (2 h^2))`` in weighted Lab, ``x = (L*/2, 2 a*, b*)``,
       ``h = 4``, until ``c`` moves < 0.01 (at most 40 steps).

    The kernel gives a lesion pixel a weight that vanishes as its colour leaves the skin's,
    so the mode is not pulled by the lesion, whichever way the lesion differs (a median or a
    trimmed mean is), and the faint edge of a soft lesion counts only as much as it still
    looks like skin. a* counts twice because inflammatory lesions differ from skin mainly in
    redness; L* counts half because lighting (gradient, vignette, exposure) spreads healthy
    skin mostly along L*, so the kernel spans that spread instead of locking onto one side
    of it. Starting outside the centre picks the skin cluster even when the lesion covers
    most of the middle. The image's ITA is the ITA of the mode's (L*, b*). Frames larger than
    ``MAX_PIXELS`` look for the mode on a regular subgrid.

    ``healthy_skin_mask`` gives the pixels within ``2 h`` (weighted distance 8) of the mode;
    rule ``"mask"`` takes the median L* and b* over them instead of the mode, and rule
    ``"all"`` the median over every pixel (no lesion exclusion; a baseline).

    Measured on the procedural images, where the generator knows the lesion (``render_layers``;
    truth = the ITA of the median L*, b* over the pixels with lesion coverage exactly 0), all 5
    diseases x FST 1..6 x 200 seeds, twice (``benchmarks/skin_tone.py``, default seeds and
    ``--seed-base 123456789``; 2 x 6,000 images of 64 px), |ITA(rule) - truth| in degrees:

    ======  ======  ====  ===========  ===========
    rule    median  p99   within 4     max
    ======  ======  ====  ===========  ===========
    mode    0.21    2.5   99.8 %       17.8 / 7.0
    mask    0.12    2.3   99.8 %       18.1 / 9.3
    all     0.34    5.2   98.0 %       17.2 / 13.9
    ======  ======  ====  ===========  ===========

    Hence the stated tolerance of the default rule: ``TOLERANCE_SHARE`` = 99 % of images within
    ``TOLERANCE_DEG`` = 4 degrees. The rare larger errors are frames whose lesion covers most
    of the frame in colours continuous with the skin's (the 17.8 degree one: allergic contact
    dermatitis on FST 4, 77 % of the pixels lesion, healthy L* near 50 where one unit of L*
    is 2.4 degrees of ITA): no colour rule finds the skin there. Part of the small errors is
    the truth's own: lighting makes the lesion-free periphery darker than the whole frame.

Reference bands and agreement
    ``ReferenceBands.from_real`` keeps each group's real ITAs, their median and central 90 %
    band (5th..95th percentile). An image is assigned to the group whose real median ITA is
    nearest (thresholds at the midpoints between sorted medians); *agreement* is the share of
    images assigned to the group they were prompted for, *in band* the share inside their own
    group's band. The same assignment applied to held-out real images gives the ceiling of
    agreement (groups overlap in skin tone: FST bins are not ITA bins).

    Agreement and in-band share saturate: with the procedural set's medians (-55.8, 17.9, 62.1
    degrees) an image must be 22-37 degrees off to count as wrong, so a pool of flat patches,
    one colour per group at its median, scores 1.000 on both, above the held-out real ceiling
    (~0.96). Agreement above its ceiling points to a tone range narrower than real, not to
    better than real fidelity; the report flags it (``above_ceiling``: more than one standard
    error of the difference above, so a real sample trips it by chance in ~1 group in 6).

Distance to the real distribution (the primary skin-tone endpoint)
    ``ita_distance_ratios``, per group ``g``: the reference is the real training images' ITAs of
    ``g`` (``ReferenceBands.samples``), the floor ``W1(held-out real ITAs of g, reference)`` in
    degrees (``W1``: 1-D Wasserstein-1 distance, the area between the two empirical CDFs). The
    pool side is subsampled per (g, disease) subclass to the held-out split's count of that
    subclass (without replacement where the pool has enough, else with), so it has the held-out
    N and disease mix; its W1 to the reference is averaged over ``subsamples`` seeded draws.
    ``w1_ratio = mean W1(pool subsample, reference) / floor``: 1 = as close to the reference as
    held-out real images, larger = worse. W1 shrinks with N, so comparing at the held-out N
    keeps the ratio free of the pool's size. A flat-patch pool lands at its group's mean
    absolute deviation about the median (several floors), so it fails this endpoint.
    ``spread_ratio = IQR(pool ITAs of g) / IQR(reference ITAs of g)``: < 1 a narrower tone
    range than real (0 for flat patches), > 1 wider.

    The floor is one held-out draw, so a real sample's ratio scatters about 1 whatever N (the
    procedural groups mix two FSTs whose palettes differ, and W1 between samples is dominated by
    the drawn mix): over 200 simulated rounds with the Fitzpatrick17k subclass mix, per group
    median 1.05, 90th percentile ~1.9, 15-25 % above 1.5, while a flat-patch pool's ratio grows
    as sqrt(N) (3.4-17 at 59-303 held-out images per group). Within one run every variant shares
    the floor, so the floor's luck scales all variants of a group alike (it does move which group
    is the worst).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance
from skimage.color import rgb2lab

RULES = ("mode", "mask", "all")
# |ITA("mode") - ITA(true healthy skin)| on the procedural images (module docstring): at least
# TOLERANCE_SHARE of the images lie within TOLERANCE_DEG (measured 99.8 %).
TOLERANCE_DEG = 4.0
TOLERANCE_SHARE = 0.99
BANDWIDTH = 4.0  # mean-shift kernel width h, in weighted Lab units
CHANNEL_WEIGHTS = (0.5, 2.0, 1.0)  # (L*, a*, b*): shading (L*) counts half, redness (a*) twice
MASK_RADIUS = 2.0  # healthy_skin_mask: pixels within MASK_RADIUS * h of the mode
START_RADIUS = 0.5  # the start excludes the central disc of this radius (in half-widths)
MAX_STEPS = 40
STEP_TOL = 0.01
MAX_PIXELS = 128 * 128  # larger frames are subsampled (a regular stride) to find the mode
CHUNK = 256  # images converted at a time (bounds memory: ~50 MB of float32 Lab at 64 px)


# ----------------------------------------------------------------------------------------------
# Colour and ITA
# ----------------------------------------------------------------------------------------------


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``(..., 3)`` (uint8 0..255, or float in [0, 1]) -> CIELAB float32 ``(..., 3)``, D65."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"expected RGB values in a last axis of 3, got shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    elif np.issubdtype(rgb.dtype, np.floating):
        x = rgb.astype(np.float32, copy=False)
    else:
        raise ValueError(f"RGB must be uint8 (0..255) or float (0..1), got {rgb.dtype}")
    flat = x.reshape(-1, 1, 3)  # rgb2lab wants an image; any leading shape folds into rows
    return rgb2lab(flat).astype(np.float32, copy=False).reshape(x.shape)


def ita_degrees(pixels: np.ndarray, space: str = "lab") -> np.ndarray:
    """ITA in degrees, ``atan2(L* - 50, b*) * 180 / pi``, per pixel: ``(..., 3)`` -> ``(...)``.

    ``space="lab"``: ``pixels`` are CIELAB (L*, a*, b*); ``space="rgb"``: sRGB, uint8 0..255
    or float in [0, 1], converted with ``srgb_to_lab``. float64 result.
    """
    if space == "rgb":
        lab = srgb_to_lab(pixels)
    elif space == "lab":
        lab = np.asarray(pixels)
        if lab.shape[-1:] != (3,):
            raise ValueError(f"expected (..., 3) Lab values, got shape {lab.shape}")
    else:
        raise ValueError(f"space must be 'lab' or 'rgb', got {space!r}")
    return _ita(lab[..., 0], lab[..., 2])


def _ita(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(np.asarray(L, dtype=np.float64) - 50.0, np.asarray(b, dtype=np.float64)))


# ----------------------------------------------------------------------------------------------
# Healthy skin
# ----------------------------------------------------------------------------------------------


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    images = np.asarray(images)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3) or (H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"empty images: {images.shape}")
    return images, single


def _stride(h: int, w: int, max_pixels: int) -> int:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return max(1, math.ceil(math.sqrt(h * w / max_pixels)))


def _outer(h: int, w: int) -> np.ndarray:
    """Bool ``(h * w,)``: pixel centres outside the central disc of radius START_RADIUS (half-widths)."""
    ys = (np.arange(h) + 0.5) / h * 2.0 - 1.0
    xs = (np.arange(w) + 0.5) / w * 2.0 - 1.0
    outer = (ys[:, None] ** 2 + xs[None, :] ** 2) > START_RADIUS**2
    return outer.reshape(-1) if outer.any() else np.ones(h * w, dtype=bool)


def _skin_mode(weighted: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """Mean-shift mode ``(n, 3)`` of weighted Lab pixels ``(n, P, 3)``, started from the outer median.

    Squared distances are expanded, ``|x|^2 - 2 x.c`` (the ``|c|^2`` term, like the per-image
    minimum subtracted for stability, is constant per image and cancels in the normalised
    weights), so each step is two batched matrix products and one ``exp`` over ``(n, P)``. An
    image stops when its centre moves less than ``STEP_TOL`` (or after ``MAX_STEPS``); the
    batch is compacted to the moving images when they are fewer than half of it.
    """
    x = np.ascontiguousarray(weighted, dtype=np.float32)
    centre = np.median(x.transpose(0, 2, 1)[:, :, outer], axis=2).astype(np.float32)  # (n, 3)
    x2 = np.einsum("npc,npc->np", x, x)  # (n, P)
    scale = np.float32(-0.5 / BANDWIDTH**2)
    idx = np.arange(len(x))  # images in the working batch (x, x2 rows)
    moving = np.ones(len(x), dtype=bool)  # over the working batch
    for _ in range(MAX_STEPS):
        if moving.sum() * 2 < len(idx):
            idx, x, x2 = idx[moving], x[moving], x2[moving]
            moving = np.ones(len(idx), dtype=bool)
        c = centre[idx]
        d2 = np.matmul(x, c[:, :, None])[:, :, 0]
        d2 *= -2.0
        d2 += x2
        d2 -= d2.min(axis=1, keepdims=True)  # the nearest pixel gets weight 1: never 0 / 0
        d2 *= scale
        k = np.exp(d2, out=d2)
        new = (k[:, None, :] @ x)[:, 0, :] / k.sum(axis=1)[:, None]
        step = np.abs(new - c).max(axis=1)
        centre[idx[moving]] = new[moving]
        moving &= step >= STEP_TOL
        if not moving.any():
            break
    return centre


def _weights() -> np.ndarray:
    return np.asarray(CHANNEL_WEIGHTS, dtype=np.float32)


def _chunks(images: np.ndarray, max_pixels: int):
    """Yield ``(start, lab (c, H, W, 3), modes (c, 3))`` per chunk of uint8 images ``(N, H, W, 3)``.

    ``modes`` are the skin-colour modes in (unweighted) CIELAB, found on a regular subgrid of
    at most about ``max_pixels`` pixels per image.
    """
    n, h, w, _ = images.shape
    s = _stride(h, w, max_pixels)
    outer = _outer(len(range(0, h, s)), len(range(0, w, s)))
    wts = _weights()
    for i in range(0, n, CHUNK):
        lab = srgb_to_lab(images[i : i + CHUNK])
        sub = lab[:, ::s, ::s].reshape(len(lab), -1, 3) * wts
        yield i, lab, _skin_mode(sub, outer) / wts


def _masks(lab: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Bool ``(c, H, W)``: weighted Lab distance to the mode <= MASK_RADIUS * h, or the nearest pixel."""
    wts = _weights()
    d2 = np.square((lab - modes[:, None, None, :]) * wts).sum(axis=-1)
    nearest = d2 == d2.reshape(len(d2), -1).min(axis=1)[:, None, None]
    return (d2 <= (MASK_RADIUS * BANDWIDTH) ** 2) | nearest


def healthy_skin_mask(image: np.ndarray, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Healthy-skin pixels: bool ``(H, W)`` for a uint8 ``(H, W, 3)`` image (``(N, H, W)`` for a batch).

    The pixels whose weighted Lab colour ``(L*/2, 2 a*, b*)`` lies within ``MASK_RADIUS * h`` = 8
    of the image's skin-colour mode (module docstring). Never empty: the pixel nearest the
    mode is always in it.
    """
    images, single = _as_batch(image)
    masks = np.empty(images.shape[:3], dtype=bool)
    for i, lab, modes in _chunks(images, max_pixels):
        masks[i : i + len(lab)] = _masks(lab, modes)
    return masks[0] if single else masks


def image_ita(images: np.ndarray, rule: str = "mode", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """ITA in degrees of each image's healthy skin: uint8 ``(N, H, W, 3)`` -> float64 ``(N,)``.

    ``rule``: ``"mode"`` (default) the ITA of the skin-colour mode; ``"mask"`` of the median
    L*, b* over ``healthy_skin_mask``; ``"all"`` of the median L*, b* over every pixel. A single
    ``(H, W, 3)`` image gives shape ``(1,)``. About 1.5 s per 1,000 64 x 64 images on one core
    (``"mode"``; half of it the sRGB -> CIELAB conversion).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    images, _ = _as_batch(images)
    n, h, w, _ = images.shape
    out = np.empty(n)
    if rule == "all":
        for i in range(0, n, CHUNK):
            lab = srgb_to_lab(images[i : i + CHUNK]).reshape(-1, h * w, 3)
            out[i : i + len(lab)] = _ita(np.median(lab[..., 0], axis=1), np.median(lab[..., 2], axis=1))
        return out
    for i, lab, modes in _chunks(images, max_pixels):
        if rule == "mode":
            out[i : i + len(lab)] = _ita(modes[:, 0], modes[:, 2])
            continue
        for j, (pixels, mask) in enumerate(zip(lab, _masks(lab, modes))):
            skin = pixels[mask]
            out[i + j] = _ita(np.median(skin[:, 0]), np.median(skin[:, 2]))
    return out


# ----------------------------------------------------------------------------------------------
# Real reference and the report
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceBands:
    """Real ITA per group: median, central 90 % band, and the nearest-median assignment.

    ``groups`` are ordered by real median ITA, ascending (darkest first); ``median``,
    ``p05``, ``p95`` map group -> degrees; ``samples`` group -> the real ITAs (float64, sorted);
    ``thresholds`` ``(G - 1,)`` are the midpoints between consecutive medians: an ITA below
    ``thresholds[0]`` is assigned to ``groups[0]``, between ``thresholds[j - 1]`` and
    ``thresholds[j]`` to ``groups[j]`` (a tie at a midpoint goes to the lighter group).
    """

    groups: tuple[str, ...]
    median: dict[str, float]
    p05: dict[str, float]
    p95: dict[str, float]
    thresholds: np.ndarray
    samples: dict[str, np.ndarray] = field(repr=False)

    @classmethod
    def from_real(cls, ita: np.ndarray, groups: np.ndarray) -> ReferenceBands:
        """From real images' ITA ``(N,)`` in degrees and their group labels ``(N,)``."""
        ita, groups = _check_pair(ita, groups, "ita", "groups")
        if len(ita) == 0:
            raise ValueError("no real ITA values")
        names = sorted(set(groups.tolist()))
        samples = {g: np.sort(ita[groups == g]) for g in names}
        median = {g: float(np.median(v)) for g, v in samples.items()}
        order = tuple(sorted(names, key=lambda g: (median[g], g)))
        meds = np.array([median[g] for g in order])
        return cls(
            groups=order,
            median={g: median[g] for g in order},
            p05={g: float(np.percentile(samples[g], 5)) for g in order},
            p95={g: float(np.percentile(samples[g], 95)) for g in order},
            thresholds=(meds[:-1] + meds[1:]) / 2.0,
            samples={g: samples[g] for g in order},
        )

    def assign(self, ita: np.ndarray) -> np.ndarray:
        """The group of nearest real median for each ITA ``(N,)``: object array of group names ``(N,)``."""
        ita = np.asarray(ita, dtype=np.float64)
        idx = np.searchsorted(self.thresholds, ita, side="right")
        return np.asarray(self.groups, dtype=object)[idx]

    def in_band(self, ita: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Bool ``(N,)``: each ITA inside its group's real 5th..95th percentile band (inclusive)."""
        ita, groups = _check_pair(ita, groups, "ita", "groups")
        self._check_known(groups)
        lo = np.array([self.p05[g] for g in groups.tolist()], dtype=np.float64)
        hi = np.array([self.p95[g] for g in groups.tolist()], dtype=np.float64)
        return (ita >= lo) & (ita <= hi)

    def _check_known(self, groups: np.ndarray) -> None:
        unknown = sorted(set(groups.tolist()) - set(self.groups))
        if unknown:
            raise ValueError(f"groups {unknown} have no real reference; known: {list(self.groups)}")


def _check_pair(values, labels, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=object).reshape(-1)
    if len(values) != len(labels):
        raise ValueError(f"{a} and {b} differ in length: {len(values)} and {len(labels)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{a} has non-finite values")
    return values, labels


def _stats(ita: np.ndarray, groups: np.ndarray, ref: ReferenceBands, group: str) -> dict:
    return {
        "n": int(len(ita)),
        "in_band": float(ref.in_band(ita, groups).mean()),
        "wasserstein": float(wasserstein_distance(ita, ref.samples[group])),
        "agreement": float((ref.assign(ita) == groups).mean()),
        "ita_median": float(np.median(ita)),
    }


SUBSAMPLES = 8  # pool subsamples averaged into the numerator of w1_ratio


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples ``(n,)`` and ``(m,)``, in their unit (degrees).

    The area between the two empirical CDFs, ``integral |F_u(x) - F_v(x)| dx``, evaluated exactly
    between consecutive pooled sample points. Equal-weight samples; both must be non-empty.
    """
    u = np.sort(np.asarray(u, dtype=np.float64).reshape(-1))
    v = np.sort(np.asarray(v, dtype=np.float64).reshape(-1))
    if len(u) == 0 or len(v) == 0:
        raise ValueError(f"W1 needs two non-empty samples, got {len(u)} and {len(v)} values")
    points = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, points[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, points[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def _iqr(values: np.ndarray) -> float:
    q25, q75 = np.percentile(values, [25, 75])
    return float(q75 - q25)


def heldout_mix_subsample(pool_disease: Sequence, heldout_disease: Sequence, rng: np.random.Generator) -> np.ndarray:
    """Indices into one group's pool ``(n,)`` drawing, per disease, the held-out count of that disease.

    ``pool_disease`` ``(n,)`` and ``heldout_disease`` ``(m,)`` are the disease labels of one
    group's pool and held-out images. For each disease of the held-out set (sorted), ``k`` =
    its held-out count rows are drawn from the pool's rows of that disease: without
    replacement when the pool has at least ``k``, else with replacement. Diseases the pool
    lacks are left out (the subsample is then smaller than ``m``); pool diseases absent from
    the held-out set get weight 0. Returns int64 ``(<= m,)``, grouped by disease.
    """
    pool_disease = np.asarray(pool_disease, dtype=object).reshape(-1)
    names, counts = np.unique(np.asarray(heldout_disease, dtype=object).reshape(-1), return_counts=True)
    parts = []
    for d, k in zip(names.tolist(), counts.tolist()):
        rows = np.flatnonzero(pool_disease == d)
        if len(rows):
            parts.append(rng.choice(rows, size=k, replace=len(rows) < k))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def ita_distance_ratios(
    gen_ita: np.ndarray,
    gen_group: Sequence,
    gen_disease: Sequence,
    heldout_ita: np.ndarray,
    heldout_group: Sequence,
    heldout_disease: Sequence,
    reference: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    subsamples: int = SUBSAMPLES,
) -> pd.DataFrame:
    """Per group: the pool's W1 distance to the real ITAs in units of the real-vs-real floor, and its spread.

    ``gen_ita`` ``(N,)`` degrees with ``gen_group``, ``gen_disease`` ``(N,)``: the pool;
    ``heldout_ita`` ``(M,)`` degrees with ``heldout_group``, ``heldout_disease`` ``(M,)``: real
    images outside the reference; ``reference``: group -> the real reference ITAs ``(R_g,)``
    in degrees (the training split, e.g. ``ReferenceBands.samples``). One row per group
    present in the pool, in ``reference``'s order (then any other, sorted), columns:

    - ``n``, ``n_heldout``, ``n_subsample`` (pool images per subsample: ``n_heldout`` unless
      the pool lacks one of the held-out diseases, see ``heldout_mix_subsample``);
    - ``w1_floor``: ``W1(held-out ITAs of g, reference of g)``, degrees;
    - ``w1_pool``: the mean over ``subsamples`` draws (``numpy.random.default_rng(seed)``, one
      stream over the groups in row order) of ``W1(pool subsample, reference of g)``, degrees;
    - ``w1_ratio``: ``w1_pool / w1_floor`` (1 = as close as held-out real, larger = worse);
    - ``pool_iqr``, ``real_iqr``: inter-quartile ranges (degrees) of the whole pool's and the
      reference's ITAs of g; ``spread_ratio = pool_iqr / real_iqr``.

    Raises ``ValueError`` naming the group when a pool group has no held-out or no reference
    images, none of its pool images has a held-out disease, or its floor or reference IQR is 0.
    """
    ita, groups = _check_pair(gen_ita, gen_group, "gen_ita", "gen_group")
    diseases = np.asarray(gen_disease, dtype=object).reshape(-1)
    h_ita, h_groups = _check_pair(heldout_ita, heldout_group, "heldout_ita", "heldout_group")
    h_diseases = np.asarray(heldout_disease, dtype=object).reshape(-1)
    if len(diseases) != len(ita):
        raise ValueError(f"gen_ita and gen_disease differ in length: {len(ita)} and {len(diseases)}")
    if len(h_diseases) != len(h_ita):
        raise ValueError(f"heldout_ita and heldout_disease differ in length: {len(h_ita)} and {len(h_diseases)}")
    if subsamples < 1:
        raise ValueError(f"subsamples must be >= 1, got {subsamples}")
    present = set(groups.tolist())
    order = [g for g in reference if g in present] + sorted(present - set(reference))
    rng = np.random.default_rng(seed)
    rows = []
    for g in order:
        real = np.asarray(reference.get(g, ()), dtype=np.float64).reshape(-1)
        held = h_groups == g
        if len(real) == 0:
            raise ValueError(f"group {g!r} has no reference (training) ITA values")
        if not held.any():
            raise ValueError(f"group {g!r} has no held-out ITA values")
        floor = wasserstein_1d(h_ita[held], real)
        if floor <= 0:
            raise ValueError(f"group {g!r}: the real-vs-real W1 floor is 0 (held-out and reference ITAs coincide)")
        real_iqr = _iqr(real)
        if real_iqr <= 0:
            raise ValueError(f"group {g!r}: the reference ITAs have an inter-quartile range of 0")
        mine = groups == g
        pool_ita, pool_disease = ita[mine], diseases[mine]
        draws = [heldout_mix_subsample(pool_disease, h_diseases[held], rng) for _ in range(subsamples)]
        if len(draws[0]) == 0:
            raise ValueError(
                f"group {g!r}: no pool image has one of the held-out diseases {sorted(set(h_diseases[held].tolist()))}"
            )
        w1_pool = float(np.mean([wasserstein_1d(pool_ita[rows_], real) for rows_ in draws]))
        pool_iqr = _iqr(pool_ita)
        rows.append(
            {
                "group": g,
                "n": int(mine.sum()),
                "n_heldout": int(held.sum()),
                "n_subsample": len(draws[0]),
                "w1_floor": floor,
                "w1_pool": w1_pool,
                "w1_ratio": w1_pool / floor,
                "pool_iqr": pool_iqr,
                "real_iqr": real_iqr,
                "spread_ratio": pool_iqr / real_iqr,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "group",
            "n",
            "n_heldout",
            "n_subsample",
            "w1_floor",
            "w1_pool",
            "w1_ratio",
            "pool_iqr",
            "real_iqr",
            "spread_ratio",
        ],
    )


def _above_ceiling(agreement: float, n: int, ceiling: float, n_heldout: int) -> float:
    """1.0 when ``agreement`` (n images) exceeds ``ceiling`` (n_heldout images) by more than the
    binomial standard error of their difference, ``sqrt(p (1 - p) / n + c (1 - c) / n_heldout)``."""
    se = math.sqrt(agreement * (1 - agreement) / n + ceiling * (1 - ceiling) / n_heldout)
    return float(agreement - ceiling > se)


def skin_tone_report(
    gen_ita: np.ndarray,
    gen_group: Sequence,
    gen_disease: Sequence,
    ref: ReferenceBands,
    heldout_ita: np.ndarray | None = None,
    heldout_group: Sequence | None = None,
    *,
    heldout_disease: Sequence | None = None,
    seed: int = 0,
    subsamples: int = SUBSAMPLES,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], pd.DataFrame]:
    """Skin-tone fidelity of generated images against the real reference ``ref``.

    ``gen_ita`` ``(N,)`` degrees, ``gen_group`` ``(N,)`` the prompted group, ``gen_disease``
    ``(N,)``; optional held-out real images ``heldout_ita``, ``heldout_group`` ``(M,)`` give the
    ceiling of agreement; with their diseases ``heldout_disease`` ``(M,)`` as well, the distance
    ratios of ``ita_distance_ratios`` (reference: ``ref.samples``, the real training ITAs;
    ``seed`` and ``subsamples`` are passed on). Returns:

    - per subclass, one row per (group, disease) present, sorted: ``group, disease, n,
      in_band, wasserstein, agreement, ita_median``. ``in_band``: share of generated ITAs inside
      the group's real 5..95th percentile band; ``wasserstein``: 1-D Wasserstein distance
      (degrees) between generated ITAs and all the group's real ITAs; ``agreement``: share
      assigned (nearest real median) to the prompted group;
    - per group, one row per group present, in ``ref.groups`` order (darkest first): the same
      columns without ``disease``, plus ``real_median, real_p05, real_p95`` and, with held-out
      images, ``agreement_ceiling`` (NaN for a group without held-out images) and
      ``above_ceiling`` (1.0 when the group's agreement exceeds its ceiling by more than the
      binomial standard error of the difference, else 0.0; NaN without a ceiling), and with
      ``heldout_disease`` also ``w1_ratio, w1_floor, spread_ratio``;
    - summary, flat floats: ``skin_tone_agreement`` (all images), ``skin_tone_agreement_<group>``,
      ``skin_tone_agreement_worst_group`` (the lowest), ``ita_in_band``, ``ita_in_band_<group>``,
      ``ita_wasserstein_<group>``, and with held-out images ``skin_tone_agreement_ceiling``,
      ``skin_tone_agreement_ceiling_<group>``, ``skin_tone_agreement_above_ceiling_<group>``
      and ``skin_tone_agreement_above_ceiling`` (1.0 if any group is); with ``heldout_disease``
      also ``skin_tone_w1_ratio_<group>``, ``skin_tone_w1_ratio_worst_group`` (the largest:
      the primary skin-tone endpoint, lower is better, 1 = held-out real), ``skin_tone_w1_floor_<group>``
      (degrees), ``skin_tone_spread_ratio_<group>`` and ``skin_tone_spread_ratio_worst_group``
      (the ratio furthest from 1 in log terms);
    - confusion, counts (int): rows the prompted group (index name ``prompted``), columns the
      assigned group (``assigned``), both all of ``ref.groups`` in order.
    """
    ita, groups = _check_pair(gen_ita, gen_group, "gen_ita", "gen_group")
    diseases = np.asarray(gen_disease, dtype=object).reshape(-1)
    if len(diseases) != len(ita):
        raise ValueError(f"gen_ita and gen_disease differ in length: {len(ita)} and {len(diseases)}")
    if len(ita) == 0:
        raise ValueError("no generated ITA values")
    ref._check_known(groups)
    if (heldout_ita is None) != (heldout_group is None):
        raise ValueError("give both heldout_ita and heldout_group, or neither")
    if heldout_disease is not None and heldout_ita is None:
        raise ValueError("heldout_disease needs heldout_ita and heldout_group")

    rows = []
    for g, d in sorted(set(zip(groups.tolist(), diseases.tolist()))):
        m = (groups == g) & (diseases == d)
        rows.append({"group": g, "disease": d, **_stats(ita[m], groups[m], ref, g)})
    per_subclass = pd.DataFrame(
        rows, columns=["group", "disease", "n", "in_band", "wasserstein", "agreement", "ita_median"]
    )

    ceiling: dict[str, float] = {}
    summary: dict[str, float] = {}
    if heldout_ita is not None:
        h_ita, h_groups = _check_pair(heldout_ita, heldout_group, "heldout_ita", "heldout_group")
        if len(h_ita) == 0:
            raise ValueError("no held-out ITA values")
        ref._check_known(h_groups)
        h_hit = ref.assign(h_ita) == h_groups
        ceiling = {g: float(h_hit[h_groups == g].mean()) for g in ref.groups if (h_groups == g).any()}
        n_ceiling = {g: int((h_groups == g).sum()) for g in ceiling}
    distance = None
    if heldout_disease is not None:
        distance = ita_distance_ratios(
            ita,
            groups,
            diseases,
            heldout_ita,
            heldout_group,
            heldout_disease,
            ref.samples,
            seed=seed,
            subsamples=subsamples,
        ).set_index("group")

    rows = []
    for g in ref.groups:
        m = groups == g
        if not m.any():
            continue
        row = {
            "group": g,
            **_stats(ita[m], groups[m], ref, g),
            "real_median": ref.median[g],
            "real_p05": ref.p05[g],
            "real_p95": ref.p95[g],
        }
        if heldout_ita is not None:
            row["agreement_ceiling"] = ceiling.get(g, float("nan"))
            row["above_ceiling"] = (
                _above_ceiling(row["agreement"], row["n"], ceiling[g], n_ceiling[g]) if g in ceiling else float("nan")
            )
        if distance is not None:
            row.update({k: float(distance.loc[g, k]) for k in ("w1_ratio", "w1_floor", "spread_ratio")})
        rows.append(row)
    per_group = pd.DataFrame(rows)

    assigned = ref.assign(ita)
    summary["skin_tone_agreement"] = float((assigned == groups).mean())
    for row in rows:
        summary[f"skin_tone_agreement_{row['group']}"] = row["agreement"]
    summary["skin_tone_agreement_worst_group"] = float(min(row["agreement"] for row in rows))
    summary["ita_in_band"] = float(ref.in_band(ita, groups).mean())
    for row in rows:
        summary[f"ita_in_band_{row['group']}"] = row["in_band"]
    for row in rows:
        summary[f"ita_wasserstein_{row['group']}"] = row["wasserstein"]
    if heldout_ita is not None:
        summary["skin_tone_agreement_ceiling"] = float(h_hit.mean())
        for g, v in ceiling.items():
            summary[f"skin_tone_agreement_ceiling_{g}"] = v
        flags = {row["group"]: row["above_ceiling"] for row in rows if row["group"] in ceiling}
        for g, v in flags.items():
            summary[f"skin_tone_agreement_above_ceiling_{g}"] = v
        summary["skin_tone_agreement_above_ceiling"] = float(any(v == 1.0 for v in flags.values()))
    if distance is not None:
        for g in distance.index:
            summary[f"skin_tone_w1_ratio_{g}"] = float(distance.loc[g, "w1_ratio"])
        summary["skin_tone_w1_ratio_worst_group"] = float(distance["w1_ratio"].max())
        for g in distance.index:
            summary[f"skin_tone_w1_floor_{g}"] = float(distance.loc[g, "w1_floor"])
        spread = distance["spread_ratio"]
        for g in distance.index:
            summary[f"skin_tone_spread_ratio_{g}"] = float(spread[g])
        # log|ratio|: halving and doubling the spread are equally far from 1; a flat pool (0) is furthest.
        with np.errstate(divide="ignore"):
            worst = int(np.argmax(np.abs(np.log(spread.to_numpy()))))
        summary["skin_tone_spread_ratio_worst_group"] = float(spread.iloc[worst])

    index = {g: i for i, g in enumerate(ref.groups)}
    counts = np.zeros((len(ref.groups), len(ref.groups)), dtype=np.int64)
    np.add.at(counts, ([index[g] for g in groups.tolist()], [index[g] for g in assigned.tolist()]), 1)
    confusion = pd.DataFrame(
        counts, index=pd.Index(ref.groups, name="prompted"), columns=pd.Index(ref.groups, name="assigned")
    )
    return per_subclass, per_group, summary, confusion
