"""Procedural, deterministic skin-lesion images: the demo dataset standing in for Fitzpatrick17k.

Every image is a pure function of ``(fst, disease, seed, size)``: a numpy ``Generator`` seeded
with ``seed`` draws, in a fixed order, the framing, the skin, the lighting, the lesion and the
sensor noise. numpy only (no torch, no network, no files).

Coordinates: pixel centres on a square grid ``xx, yy`` in ``[-1, 1]`` (1 = half the image
width), so lesion sizes and positions are resolution-independent. Colours are float32 RGB
reflectances in ``[0, 1]`` until the final uint8 conversion.

What the images model
- skin: a per-FST palette (type I pale pink-beige ... type VI deep brown), low-frequency
  mottling, pores and fine noise, optional hair and naevi / pigmented macules;
- lighting: a linear gradient, a vignette, a light-colour cast, an exposure change;
- framing: a zoom factor that scales lesions, and lesion centres that can sit near or past the
  border (partial visibility);
- lesions, one renderer per disease (shape, colour, texture differ by disease), with
  within-class variation and deliberately atypical, confusable cases;
- fairness, as in the real problem, lesion contrast is lower on darker skin:
  * colour cues (erythema, violaceous, pink) are reflectance *multipliers*, so the absolute
    colour change shrinks with the skin's brightness, and their hue drifts towards one shared
    dusky "inflamed" hue (``_COLOUR_VISIBILITY``); the pearly translucency of BCC fades too;
  * surface cues (scale, crust, vesicles, striae) stay, but their colour moves less far from
    the skin's (``_SURFACE_VISIBILITY``): ashier, weaker;
  * darker skin carries more pigment irregularity (``_PIGMENT_IRREGULARITY``) and more
    pigmented BCC (``_PIGMENTED_BCC``), so the remaining cues are noisier, while the additive
    sensor noise is the same for every skin type.
  ``render_layers`` exposes the lesion-free image and the lesion mask, to measure contrast.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DISEASES = (
    "allergic contact dermatitis",
    "basal cell carcinoma",
    "lichen planus",
    "psoriasis",
    "squamous cell carcinoma",
)
VARIANT = "procedural-v1"

# Skin base colour per Fitzpatrick type, sRGB 0..255 (type I pale pink-beige ... VI deep brown).
_SKIN_PALETTE = {
    1: (243, 214, 198),
    2: (228, 188, 160),
    3: (202, 156, 120),
    4: (162, 114, 80),
    5: (114, 76, 52),
    6: (70, 46, 33),
}
# Fraction of a disease's own lesion hue that shows (the rest is the shared dusky hue below).
_COLOUR_VISIBILITY = {1: 1.0, 2: 0.97, 3: 0.94, 4: 0.92, 5: 0.9, 6: 0.88}
# How far surface colours (scale, crust, vesicles, striae, sheen) move from the skin's colour
# towards their own (1 = all the way): ashier, weaker surface cues on darker skin.
_SURFACE_VISIBILITY = {1: 1.0, 2: 0.96, 3: 0.9, 4: 0.84, 5: 0.76, 6: 0.68}
# Amplitude of benign pigment irregularity (mottling, macules): distractors, larger on dark skin.
_PIGMENT_IRREGULARITY = {1: 0.6, 2: 0.7, 3: 0.8, 4: 0.9, 5: 1.0, 6: 1.0}
# Probability that a basal cell carcinoma is pigmented (brown globules), by skin type.
_PIGMENTED_BCC = {1: 0.05, 2: 0.05, 3: 0.1, 4: 0.2, 5: 0.3, 6: 0.35}
# Reflectance multiplier of inflammation as it looks on deeply pigmented skin (dusky grey-brown).
_DUSKY = np.array([0.80, 0.72, 0.74], dtype=np.float32)
_SENSOR_NOISE = 2.5 / 255.0  # additive, same in absolute units for every skin type


# ----------------------------------------------------------------------------------------------
# Seeds, ids, counts
# ----------------------------------------------------------------------------------------------


def image_seed(base_seed: int, group: str, disease: str, index: int, namespace: str = "train") -> int:
    """Stable 63-bit seed (0 <= seed < 2**63) from (base seed, subclass, index, namespace).

    Uses SHA-256 of a canonical string, so it is identical across processes and Python versions
    (unlike ``hash()``).
    """
    key = f"fairskin-synthetic|{int(base_seed)}|{namespace}|{group}|{disease}|{int(index)}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _slug(text: str) -> str:
    """Lower-case, runs of non-alphanumerics -> '-', e.g. 'Basal cell carcinoma' -> 'basal-cell-carcinoma'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def sample_id(namespace: str, group: str, disease: str, index: int) -> str:
    """``syn-<namespace>-<group>-<disease-slug>-<index:05d>``, lower-case, no spaces."""
    return f"syn-{_slug(namespace)}-{_slug(group)}-{_slug(disease)}-{index:05d}"


def draw_fst(seed: int, fst_bin: Sequence[int]) -> int:
    """The Fitzpatrick type of one sample: uniform over its group's bin, a function of the seed."""
    choices = sorted({int(f) for f in fst_bin})
    if not choices or any(f < 1 or f > 6 for f in choices):
        raise ValueError(f"an FST bin must be a non-empty subset of 1..6, got {list(fst_bin)}")
    digest = hashlib.sha256(f"fst|{int(seed)}".encode()).digest()
    return choices[int.from_bytes(digest[:8], "big") % len(choices)]


def scaled_counts(counts: Mapping[tuple[str, str], int], scale: float, minimum: int = 12) -> dict[tuple[str, str], int]:
    """Scale a count table (e.g. 0.25x for smoke), rounding half up, never below ``minimum``.

    Keys are ``(group, disease)``; values are image counts. ``scale`` must be > 0.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if minimum < 0:
        raise ValueError(f"minimum must be >= 0, got {minimum}")
    out = {}
    for key, n in counts.items():
        if n < 0:
            raise ValueError(f"count for {key} must be >= 0, got {n}")
        out[key] = max(int(minimum), int(math.floor(n * scale + 0.5)))
    return out


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image and its labels.

    ``image`` is uint8 ``(size, size, 3)``; ``fst`` is the Fitzpatrick type (1..6) it was
    rendered with, drawn within the group's FST bin from ``seed``.
    """

    id: str
    group: str
    disease: str
    fst: int
    seed: int
    variant: str
    image: np.ndarray


def generate_samples(
    counts: Mapping[tuple[str, str], int],
    group_fst: Mapping[str, Sequence[int]],
    *,
    seed: int,
    size: int = 64,
    namespace: str = "train",
) -> Iterator[SyntheticSample]:
    """Yield ``counts[(group, disease)]`` samples per subclass, in sorted subclass order then index order.

    ``group_fst`` maps each group to its FST bin (e.g. ``{"African": [5, 6], ...}``). Sample
    ``i`` of a subclass uses ``image_seed(seed, group, disease, i, namespace)``, so adding more
    samples never changes the earlier ones, and namespaces ("train", "heldout", ...) never
    share images.
    """
    for group, disease in sorted(counts):
        n = counts[(group, disease)]
        if n < 0:
            raise ValueError(f"count for {(group, disease)} must be >= 0, got {n}")
        if group not in group_fst:
            raise ValueError(f"group {group!r} has no FST bin; known groups: {sorted(group_fst)}")
        _check_disease(disease)
        for index in range(n):
            s = image_seed(seed, group, disease, index, namespace)
            fst = draw_fst(s, group_fst[group])
            yield SyntheticSample(
                id=sample_id(namespace, group, disease, index),
                group=group,
                disease=disease,
                fst=fst,
                seed=s,
                variant=VARIANT,
                image=render_lesion_image(fst, disease, s, size),
            )


def render_lesion_image(group_fst: int, disease: str, seed: int, size: int = 64) -> np.ndarray:
    """One image, uint8 array ``(size, size, 3)``, a pure function of its arguments.

    ``group_fst`` is the Fitzpatrick skin type 1..6, ``disease`` one of ``DISEASES``,
    ``seed`` any int (e.g. from ``image_seed``), ``size`` the side in pixels (>= 8).
    """
    return _render(group_fst, disease, seed, size, with_parts=False)[0]


def render_layers(fst: int, disease: str, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image plus what it is made of, for tests and diagnostics.

    Returns ``(image, skin_only, lesion_alpha)``: the uint8 ``(size, size, 3)`` image (equal to
    ``render_lesion_image(fst, disease, seed, size)``); the same image without the lesion
    (identical skin, lighting, framing and sensor noise); and the float32 ``(size, size)``
    lesion coverage in ``[0, 1]``.
    """
    return _render(fst, disease, seed, size, with_parts=True)


def _render(fst: int, disease: str, seed: int, size: int, with_parts: bool):
    """Validate, then draw framing, skin, lighting, lesion, sensor noise (in that order) from one generator."""
    if fst not in _SKIN_PALETTE:
        raise ValueError(f"Fitzpatrick type must be in 1..6, got {fst!r}")
    _check_disease(disease)
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)
    xx, yy = _grid(size)
    zoom = float(rng.uniform(0.75, 1.35))  # framing: >1 = closer, bigger lesions and texture

    skin, skin_colour = _skin(rng, fst, size, zoom)
    light = _lighting(rng, xx, yy)
    lesion = skin.copy() if with_parts else skin
    alpha = _LESION_RENDERERS[disease](rng, lesion, skin_colour, fst, xx, yy, zoom)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(_SENSOR_NOISE)
    image = _to_uint8(lesion * light + noise)
    if not with_parts:
        return image, None, None
    return image, _to_uint8(skin * light + noise), alpha


def _check_disease(disease: str) -> None:
    if disease not in DISEASES:
        raise ValueError(f"unknown disease {disease!r}; expected one of {DISEASES}")


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Fields: grids, smooth noise, shapes
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)``, each float32 ``(size, size)`` in ``[-1, 1]``."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


@lru_cache(maxsize=64)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """Row-normalised Gaussian interpolation weights ``(size, cells + 2)`` from a coarse lattice to pixels."""
    pixels = (np.arange(size) + 0.5) / size
    nodes = (np.arange(cells + 2) - 0.5) / cells
    w = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) * cells / 0.6) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 0) -> np.ndarray:
    """Smooth Gaussian noise with about ``cells`` blobs across the image, roughly unit std.

    Shape ``(size, size)``, or ``(size, size, channels)`` when ``channels`` > 0.
    """
    cells = int(max(1, min(cells, size)))
    a = _upsampler(size, cells)
    gain = 1.5 if cells < size // 2 else 1.0  # the interpolation smooths away some variance
    if channels:
        coarse = rng.standard_normal((channels, cells + 2, cells + 2)).astype(np.float32)
        return np.einsum("ij,cjk,lk->ilc", a, coarse, a, optimize=True) * gain
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    return (a @ coarse @ a.T) * gain


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blob(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    *,
    irregularity: float,
    softness: float,
    aspect: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A star-shaped blob: coverage in ``[0, 1]`` and the normalised radius ``d / r_edge``.

    The edge radius is ``radius * (1 + sum_k a_k cos(k theta + phi_k))`` (k = 2..5, amplitudes
    scaled by ``irregularity``), the blob is an ellipse of ``aspect`` at a random angle, and
    the edge ramps over ``softness`` (in image half-widths). Both arrays are ``(size, size)``.
    """
    angle = rng.uniform(0.0, np.pi)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - centre[0], yy - centre[1]
    u = (dx * c + dy * s) / aspect
    v = (-dx * s + dy * c) * aspect
    dist = np.sqrt(u * u + v * v) + 1e-6
    theta = np.arctan2(v, u)
    edge = np.ones_like(dist)
    for k in range(2, 6):
        amp = irregularity * rng.uniform(0.3, 1.0) / k
        edge += amp * np.cos(k * theta + rng.uniform(0.0, 2 * np.pi))
    edge = radius * np.maximum(edge, 0.3)
    coverage = _smoothstep((edge - dist) / max(softness, 1e-3) + 0.5)
    return coverage.astype(np.float32), (dist / edge).astype(np.float32)


def _segments(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """Soft lines: max over segments ``a[i] -> b[i]`` (arrays ``(n, 2)``) of a Gaussian profile of ``width``."""
    if len(a) == 0:
        return np.zeros_like(xx)
    a = np.asarray(a, dtype=np.float32)[:, :, None, None]
    ab = np.asarray(b, dtype=np.float32)[:, :, None, None] - a
    inv_len2 = 1.0 / np.maximum(ab[:, 0] ** 2 + ab[:, 1] ** 2, 1e-9)
    dx, dy = xx[None] - a[:, 0], yy[None] - a[:, 1]  # (n, H, W)
    t = np.clip((dx * ab[:, 0] + dy * ab[:, 1]) * inv_len2, 0.0, 1.0)
    dx -= t * ab[:, 0]
    dy -= t * ab[:, 1]
    d2 = (dx * dx + dy * dy).min(axis=0)
    return np.exp(d2 * np.float32(-1.0 / (width * width)))


def _polylines(
    rng: np.random.Generator, starts: np.ndarray, steps: int, step_len: float, wiggle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk polylines from ``starts`` ``(n, 2)``: their segment endpoints ``(n*steps, 2)`` twice."""
    n = len(starts)
    heading = rng.uniform(0.0, 2 * np.pi, size=n)
    pts = [starts]
    for _ in range(steps):
        heading = heading + rng.normal(0.0, wiggle, size=n)
        pts.append(pts[-1] + step_len * np.stack([np.cos(heading), np.sin(heading)], axis=1))
    arr = np.stack(pts)  # (steps + 1, n, 2)
    return arr[:-1].reshape(-1, 2), arr[1:].reshape(-1, 2)


def _dots(xx: np.ndarray, yy: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Max of Gaussian dots at ``centres`` ``(n, 2)`` with ``radii`` ``(n,)``; ``(size, size)`` in ``[0, 1]``."""
    if len(centres) == 0:
        return np.zeros_like(xx)
    c = np.asarray(centres, dtype=np.float32)[:, :, None, None]
    inv_r2 = (1.0 / np.asarray(radii, dtype=np.float32) ** 2)[:, None, None]
    d2 = ((xx[None] - c[:, 0]) ** 2 + (yy[None] - c[:, 1]) ** 2) * inv_r2
    return np.exp(-d2.min(axis=0))


# ----------------------------------------------------------------------------------------------
# Skin and lighting
# ----------------------------------------------------------------------------------------------


def _skin(rng: np.random.Generator, fst: int, size: int, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Skin reflectance ``(size, size, 3)`` float32 and its mean colour ``(3,)``.

    Base palette colour with per-image tone jitter; low-frequency mottling (brightness and
    redness), mid-frequency unevenness, pores, fine noise; sometimes naevi / pigmented macules
    and hair.
    """
    base = np.asarray(_SKIN_PALETTE[fst], dtype=np.float32) / 255.0
    base = base * np.float32(math.exp(rng.normal(0.0, 0.06))) * (1 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    base = np.clip(base, 0.02, 0.99).astype(np.float32)
    irregular = _PIGMENT_IRREGULARITY[fst]
    cells = max(2, round(4 / zoom))

    mottle = _smooth_noise(rng, size, cells) * (0.045 * irregular)
    redness = _smooth_noise(rng, size, cells + 1) * 0.02
    uneven = _smooth_noise(rng, size, 3 * cells) * (0.02 * irregular)
    fine = rng.standard_normal((size, size)).astype(np.float32) * 0.018
    pores = (rng.random((size, size)) < 0.025 * zoom).astype(np.float32) * -0.07
    shade = 1.0 + mottle + uneven + fine + pores
    skin = base[None, None, :] * shade[..., None]
    skin[..., 1:] *= (1.0 - redness)[..., None]  # blotchy redness: a benign confuser for erythema
    xx, yy = _grid(size)
    _pigmented_spots(rng, skin, fst, xx, yy)
    _hair(rng, skin, xx, yy)
    return skin, base


def _pigmented_spots(rng: np.random.Generator, skin: np.ndarray, fst: int, xx: np.ndarray, yy: np.ndarray) -> None:
    """Naevi and pigmented macules (more and bigger on darker skin), in place."""
    n = int(rng.poisson(0.6 * _PIGMENT_IRREGULARITY[fst]))
    centres = rng.uniform(-1.0, 1.0, size=(n, 2))
    radii = rng.uniform(0.02, 0.05 + 0.03 * (fst >= 4), size=n)
    spots = _dots(xx, yy, centres, radii)
    skin *= (1.0 - 0.45 * spots)[..., None]


def _hair(rng: np.random.Generator, skin: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> None:
    """A few dark hairs with probability 0.2, in place."""
    if rng.random() >= 0.2:
        return
    n = int(rng.integers(1, 5))
    a, b = _polylines(rng, rng.uniform(-1.0, 1.0, size=(n, 2)), steps=4, step_len=0.25, wiggle=0.25)
    lines = _segments(xx, yy, a, b, width=0.009)
    skin *= (1.0 - 0.5 * lines)[..., None]


def _lighting(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Illumination multiplier ``(size, size, 3)``: gradient, vignette, light cast, exposure."""
    phi = rng.uniform(0.0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0.0, 0.14) * (math.cos(phi) * xx + math.sin(phi) * yy)
    vignette = 1.0 - rng.uniform(0.0, 0.22) * (xx * xx + yy * yy) / 2.0
    exposure = math.exp(rng.normal(0.0, 0.08))
    cast = (1.0 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    return (gradient * vignette * exposure)[..., None].astype(np.float32) * cast


# ----------------------------------------------------------------------------------------------
# Lesion compositing
# ----------------------------------------------------------------------------------------------


def _hue(mult: Sequence[float], fst: int) -> np.ndarray:
    """A disease's reflectance multiplier as seen on skin type ``fst``: drifts to the dusky hue on dark skin."""
    v = _COLOUR_VISIBILITY[fst]
    return (v * np.asarray(mult, dtype=np.float32) + (1.0 - v) * _DUSKY).astype(np.float32)


def _surface(colour: Sequence[float], skin_colour: np.ndarray, fst: int) -> np.ndarray:
    """A surface colour (scale, crust, ...) as seen on skin type ``fst``: part-way from the skin colour ``(3,)``."""
    w = _SURFACE_VISIBILITY[fst]
    return (w * np.asarray(colour, dtype=np.float32) + (1.0 - w) * skin_colour).astype(np.float32)


def _tint(img: np.ndarray, alpha: np.ndarray, mult: np.ndarray) -> None:
    """Multiply reflectance by ``mult`` ``(3,)`` where ``alpha`` ``(H, W)`` is 1, in place."""
    img *= 1.0 + alpha[..., None] * (mult - 1.0)


def _mix(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Blend towards ``colour`` ``(3,)`` by ``alpha`` ``(H, W)``, in place."""
    img += alpha[..., None] * (colour - img)


def _centre(rng: np.random.Generator, spread: float = 0.32) -> tuple[float, float]:
    """A lesion centre near the middle; sometimes near or past the border (partial visibility)."""
    c = rng.normal(0.0, spread, size=2)
    return float(np.clip(c[0], -0.95, 0.95)), float(np.clip(c[1], -0.95, 0.95))


def _texture(
    rng: np.random.Generator, size: int, cells: int, threshold: float, sharpness: float = 3.0, fine: float = 0.5
) -> np.ndarray:
    """Thresholded noise texture in ``[0, 1]``, ``(size, size)``: flakes, crust, lacy striae.

    Smooth noise with about ``cells`` features across plus ``fine`` x pixel noise, thresholded.
    """
    n = _smooth_noise(rng, size, cells) + fine * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip((n - threshold) * sharpness, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Lesions, one renderer per disease. Each draws into `img` in place and returns the coverage.
# ----------------------------------------------------------------------------------------------


def _psoriasis(rng, img, skin_colour, fst, xx, yy, zoom):
    """Well-demarcated red plaques (1-3) topped with silvery-white, flaky scale."""
    size = xx.shape[0]
    n = int(rng.choice([1, 1, 2, 3]))
    plaque = np.zeros_like(xx)
    centre = _centre(rng)
    for i in range(n):
        c = centre if i == 0 else (centre[0] + rng.normal(0, 0.45), centre[1] + rng.normal(0, 0.45))
        r = rng.uniform(0.25, 0.5) * zoom / math.sqrt(n)
        cov, _ = _blob(
            rng, xx, yy, c, r, irregularity=rng.uniform(0.2, 0.6), softness=0.04, aspect=rng.uniform(0.8, 1.3)
        )
        plaque = np.maximum(plaque, cov)
    _tint(img, plaque * rng.uniform(0.75, 1.0), _hue((1.0, 0.62, 0.64), fst))
    scale_amount = rng.uniform(0.5, 0.9) if rng.random() > 0.15 else rng.uniform(0.0, 0.2)  # 15%: barely scaly
    flakes = _texture(rng, size, max(4, round(size / 5)), threshold=rng.uniform(-0.6, 0.2), sharpness=1.8, fine=0.4)
    _mix(img, plaque * flakes * scale_amount, _surface((0.90, 0.90, 0.93), skin_colour, fst))
    return plaque


def _allergic_contact_dermatitis(rng, img, skin_colour, fst, xx, yy, zoom):
    """An ill-defined, patchy red patch with scattered small vesicles."""
    size = xx.shape[0]
    c = _centre(rng, 0.25)
    patch, _ = _blob(
        rng, xx, yy, c, rng.uniform(0.35, 0.7) * zoom, irregularity=0.8, softness=0.35, aspect=rng.uniform(0.7, 1.5)
    )
    patch = patch * np.clip(0.65 + 0.5 * _smooth_noise(rng, size, 5), 0.0, 1.0)
    _tint(img, patch * rng.uniform(0.6, 0.95), _hue((1.0, 0.70, 0.70), fst))
    n = int(rng.integers(0, 4)) if rng.random() < 0.15 else int(rng.integers(6, 26))  # 15%: few vesicles
    spread = 0.45 * zoom
    centres = np.asarray(c) + rng.normal(0.0, spread, size=(n, 2))
    radii = rng.uniform(0.018, 0.04, size=n) * zoom
    vesicles = _dots(xx, yy, centres, radii) * patch
    _mix(img, vesicles * 0.75, _surface((0.97, 0.93, 0.82), skin_colour, fst))
    return np.maximum(patch, vesicles)


def _lichen_planus(rng, img, skin_colour, fst, xx, yy, zoom):
    """Clusters of violaceous, flat-topped polygonal papules with fine white (Wickham) striae.

    Each papule is a polygon (5-7 sides) around a seed point, cut by the Voronoi boundaries of
    its neighbours so that crowded papules tile with thin gaps.
    """
    size = xx.shape[0]
    c = np.asarray(_centre(rng, 0.28), dtype=np.float32)
    n = int(rng.integers(5, 22))
    seeds = (c + rng.normal(0.0, rng.uniform(0.18, 0.36) * zoom, size=(n, 2))).astype(np.float32)
    dx = xx[None] - seeds[:, 0, None, None]
    dy = yy[None] - seeds[:, 1, None, None]
    d = np.sqrt(dx * dx + dy * dy)  # (n, H, W)
    nearest = np.argmin(d, axis=0)[None]
    two = np.partition(d, 1, axis=0)[:2]
    theta = np.arctan2(np.take_along_axis(dy, nearest, 0)[0], np.take_along_axis(dx, nearest, 0)[0])
    sides = rng.integers(5, 8, size=n)[nearest[0]]
    phase = rng.uniform(0.0, 2 * np.pi, size=n)[nearest[0]]
    radius = (rng.uniform(0.05, 0.11, size=n) * zoom)[nearest[0]]
    sector = 2 * np.pi / sides
    polygon = radius * np.cos(np.pi / sides) / np.cos(np.mod(theta + phase, sector) - sector / 2)
    gap = rng.uniform(0.012, 0.03) if rng.random() > 0.15 else 0.0  # 15%: papules coalesce into a plaque
    papules = (_smoothstep((two[1] - two[0] - gap) / 0.02) * _smoothstep((polygon - two[0]) / 0.02 + 0.5)).astype(
        np.float32
    )
    _tint(img, papules * rng.uniform(0.75, 1.0), _hue((0.80, 0.60, 0.84), fst))
    if rng.random() < 0.6:  # Wickham striae
        striae = _texture(rng, size, max(4, round(size / 6)), threshold=0.9, sharpness=2.0)
        _mix(img, papules * striae * 0.5, _surface((0.92, 0.90, 0.95), skin_colour, fst))
    return papules


def _basal_cell_carcinoma(rng, img, skin_colour, fst, xx, yy, zoom):
    """A pearly translucent nodule with a rolled border and fine telangiectasia (sometimes ulcerated)."""
    c = _centre(rng, 0.28)
    r = rng.uniform(0.14, 0.3) * zoom
    nodule, rel = _blob(rng, xx, yy, c, r, irregularity=rng.uniform(0.05, 0.25), softness=0.05)
    pearl = _COLOUR_VISIBILITY[fst]  # the pink-white translucency is a colour cue: fainter on dark skin
    _tint(img, nodule * 0.6, _hue((0.98, 0.82, 0.84), fst))
    _mix(img, nodule * 0.35 * pearl, _surface((0.94, 0.86, 0.84), skin_colour, fst))
    rim = np.exp(-(((rel - 0.85) / 0.12) ** 2)) * nodule  # rolled border
    _mix(img, rim * 0.45 * pearl, _surface((0.99, 0.95, 0.93), skin_colour, fst))
    shine = _dots(xx, yy, np.array([[c[0] - 0.35 * r, c[1] - 0.35 * r]]), np.array([0.3 * r]))  # dome highlight
    _mix(img, shine * nodule * 0.35, _surface((1.0, 1.0, 1.0), skin_colour, fst))
    if rng.random() < _PIGMENTED_BCC[fst]:  # pigmented BCC, common in skin of colour: brown globules
        k = int(rng.integers(3, 9))
        globules = _dots(
            xx, yy, np.asarray(c) + rng.normal(0.0, 0.45 * r, size=(k, 2)), rng.uniform(0.15, 0.3, size=k) * r
        )
        _tint(img, globules * nodule * 0.55, np.array([0.55, 0.5, 0.5], dtype=np.float32))
    n = int(rng.integers(2, 6)) if rng.random() > 0.15 else 0  # 15%: no visible vessels
    starts = np.asarray(c) + rng.uniform(-0.7, 0.7, size=(n, 2)) * r
    a, b = _polylines(rng, starts, steps=3, step_len=0.35 * r, wiggle=0.6)
    vessels = _segments(xx, yy, a, b, width=0.008 + 0.006 * zoom) * nodule
    _tint(img, vessels * 0.65, _hue((0.95, 0.50, 0.55), fst))
    if rng.random() < 0.2:  # ulcerated centre: a confuser with SCC
        ulcer = _smoothstep((0.35 - rel) / 0.15)
        _mix(img, ulcer * 0.7 * nodule, _surface((0.55, 0.25, 0.22), skin_colour, fst))
    return nodule


def _squamous_cell_carcinoma(rng, img, skin_colour, fst, xx, yy, zoom):
    """An irregular keratotic nodule: red halo, yellow-brown crust, dark haemorrhagic ulcer."""
    size = xx.shape[0]
    c = _centre(rng, 0.28)
    r = rng.uniform(0.17, 0.34) * zoom
    halo, _ = _blob(rng, xx, yy, c, r * 1.45, irregularity=0.4, softness=0.18)
    nodule, rel = _blob(rng, xx, yy, c, r, irregularity=rng.uniform(0.3, 0.7), softness=0.05)
    _tint(img, halo * 0.6, _hue((1.0, 0.72, 0.72), fst))
    _tint(img, nodule * 0.5, _hue((0.95, 0.78, 0.74), fst))
    crust_amount = rng.uniform(0.55, 0.95) if rng.random() > 0.15 else rng.uniform(0.0, 0.2)  # 15%: smooth
    crust = _texture(rng, size, max(3, round(size / 8)), threshold=rng.uniform(-0.5, 0.3)) * nodule
    _mix(img, crust * crust_amount, _surface((0.80, 0.70, 0.48), skin_colour, fst))
    keratin = _texture(rng, size, max(4, round(size / 4)), threshold=0.8) * nodule
    _mix(img, keratin * crust_amount * 0.6, _surface((0.93, 0.90, 0.80), skin_colour, fst))
    if rng.random() < 0.65:  # ulcerated, haemorrhagic centre
        ulcer = _smoothstep((0.45 - rel) / 0.2) * nodule
        _mix(img, ulcer * 0.75, _surface((0.42, 0.16, 0.13), skin_colour, fst))
    return np.maximum(halo * 0.6, nodule)


_LESION_RENDERERS = {
    "allergic contact dermatitis": _allergic_contact_dermatitis,
    "basal cell carcinoma": _basal_cell_carcinoma,
    "lichen planus": _lichen_planus,
    "psoriasis": _psoriasis,
    "squamous cell carcinoma": _squamous_cell_carcinoma,
}
