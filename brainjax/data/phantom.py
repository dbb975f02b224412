"""Procedural, deterministic synthetic axial brain MRI slices (the `brain_phantom` dataset).

Pure numpy, no TensorFlow: the tfds builder in `brain_phantom.py` wraps it, and tests
and benchmarks can call it directly. Every slice is a function of (seed, index) only, so
the dataset is bit-identical wherever it is built.

Anatomy (coordinates in [-1, 1], y grows downwards, i.e. posterior is down):
  scalp (bright fat) -> skull (dark cortical bone) -> CSF rim -> cortex (grey matter, gyri
  as a wavy boundary) -> white matter -> two lateral ventricles (CSF) -> a few small bright
  vessels / calcifications (confounders present in every class).
Weighting: T1-like (CSF dark) or T2-like (CSF bright), random gamma, gain, bias field and
smooth texture, so intensity alone does not identify a class.

Classes (names match the real Kaggle datasets, alphabetical like their folders):
  glioma      irregular intra-axial mass (heterogeneous, necrotic core) with edema
  meningioma  well-circumscribed, homogeneous extra-axial mass abutting the inner skull
  no_tumor    normal anatomy only
  pituitary   small round midline mass at the sellar region (anterior, near the skull base)

The lesions are deliberately low-contrast and small relative to the slice (pituitary
radius ~4-6% of the field of view), so strong noise, blur or downsampling destroys the
evidence and a clean-trained model loses accuracy under degradation.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")

# (T1-like, T2-like) tissue intensities in [0, 1] before gain/gamma.
_TISSUE = {
    "scalp": (0.80, 0.55),
    "skull": (0.08, 0.06),
    "csf": (0.12, 0.90),
    "grey": (0.45, 0.55),
    "white": (0.62, 0.38),
    "tumor": (0.30, 0.75),
    "necrosis": (0.20, 0.85),
    "edema": (0.40, 0.66),
    "mening": (0.78, 0.70),
    "pit": (0.80, 0.74),
    "vessel": (0.95, 0.15),
}


def _smooth_field(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    """A zero-mean, unit-std random field with energy below `cutoff` cycles/pixel."""
    noise = rng.standard_normal((size, size))
    radius = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    field = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-((radius / cutoff) ** 2)), s=noise.shape)
    return (field - field.mean()) / (field.std() + 1e-8)


def _ellipse(x, y, cx, cy, a, b, theta=0.0):
    """Normalised elliptic radius: <1 inside the ellipse."""
    c, s = np.cos(theta), np.sin(theta)
    xr = (x - cx) * c + (y - cy) * s
    yr = -(x - cx) * s + (y - cy) * c
    return np.sqrt((xr / a) ** 2 + (yr / b) ** 2)


def _irregular_radius(rng, angle, base, roughness, harmonics=(2, 3, 4, 5, 7)):
    """A radius that wobbles with angle: sum of random low harmonics."""
    r = np.full_like(angle, base)
    for k in harmonics:
        r += base * roughness * rng.uniform(-1, 1) / k**0.5 * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return r


def _soft(inside_distance: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator from a signed distance (positive inside), partial-volume blur."""
    return 1.0 / (1.0 + np.exp(-inside_distance / width))


WEIGHTINGS = ("mixed", "t1", "t2")


def generate_slice(seed: int, index: int, label: int, size: int = 128, weighting: str = "mixed") -> np.ndarray:
    """One phantom slice as uint8 [size, size, 1]; a pure function of its arguments.
    `weighting`: "mixed" (T1- or T2-like at random, half each), "t1" or "t2" (one
    sequence only: two phantom "sites" that differ only in sequence)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    rng = np.random.default_rng([seed, index, label])
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    px = 2.0 / size  # one pixel in normalised units
    t2 = rng.random() < 0.5  # drawn in every weighting, so the rest of the slice's draws are the same
    t2 = t2 if weighting == "mixed" else weighting == "t2"
    tissue = {k: v[1 if t2 else 0] + rng.normal(0, 0.03) for k, v in _TISSUE.items()}
    img, head, geometry = _anatomy(rng, x, y, tissue, 0.6 * px)
    lesion = _LESIONS.get(CLASS_NAMES[label])
    if lesion is not None:
        img = lesion(rng, x, y, img, tissue, geometry, 0.6 * px)
    return _acquisition(rng, img, head, size)


def _anatomy(rng, x, y, tissue, w):
    """Head, skull, CSF, cortex, white matter, ventricles and confounders (every class):
    (image, head mask, geometry dict for the lesions)."""
    cx, cy = rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05)
    theta = rng.uniform(-0.2, 0.2)
    a, b = rng.uniform(0.70, 0.82), rng.uniform(0.82, 0.93)
    head_r = _ellipse(x, y, cx, cy, a, b, theta)
    angle = np.arctan2(y - cy, x - cx)
    skull_in, brain_out = rng.uniform(0.90, 0.93), rng.uniform(0.85, 0.88)
    gyri = 1 + 0.025 * np.sin(rng.integers(14, 22) * angle + rng.uniform(0, 6)) * rng.uniform(0.5, 1.5)
    cortex_in = rng.uniform(0.70, 0.78) * gyri

    img = np.zeros_like(x)
    head = _soft((1 - head_r) * a, w)
    skull = _soft((1 - head_r / skull_in * 1.0) * a, w)  # inside inner edge of scalp
    inner = _soft((1 - head_r / skull_in * 1.06) * a, w)  # inside the skull
    brain = _soft((1 - head_r / brain_out) * a, w)
    white = _soft((1 - head_r / (brain_out * cortex_in)) * a, 1.5 * w)
    img += head * tissue["scalp"]
    img += skull * (tissue["skull"] - tissue["scalp"])
    img += inner * (tissue["csf"] - tissue["skull"])
    img += brain * (tissue["grey"] - tissue["csf"])
    img += white * (tissue["white"] - tissue["grey"])

    # Lateral ventricles: two tilted ellipses either side of the midline.
    vs = rng.uniform(0.6, 1.4)
    for side in (-1, 1):
        vr = _ellipse(x, y, cx + side * rng.uniform(0.06, 0.10), cy + rng.uniform(-0.08, 0.02),
                      0.05 * vs, 0.20 * vs, theta + side * rng.uniform(0.15, 0.4))
        img += _soft((1 - vr) * 0.05 * vs, w) * (tissue["csf"] - img)

    # Confounders in every class: small bright vessels / calcifications.
    for _ in range(rng.integers(1, 5)):
        r0, ang = rng.uniform(0.1, 0.75), rng.uniform(0, 2 * np.pi)
        vr = _ellipse(x, y, cx + r0 * a * np.cos(ang), cy + r0 * b * np.sin(ang), rng.uniform(0.012, 0.03), rng.uniform(0.012, 0.03))
        img += _soft((1 - vr) * 0.02, w) * (tissue["vessel"] - img) * brain * 0.8
    return img, head, dict(cx=cx, cy=cy, a=a, b=b, brain=brain, inner=inner, brain_out=brain_out)


def _glioma(rng, x, y, img, tissue, g, w):
    """Irregular intra-axial mass with edema and (70%) a necrotic core."""
    r0, ang = rng.uniform(0.15, 0.55), rng.uniform(0, 2 * np.pi)
    gx, gy = g["cx"] + r0 * g["a"] * np.cos(ang), g["cy"] + r0 * g["b"] * np.sin(ang)
    dist = np.sqrt((x - gx) ** 2 + (y - gy) ** 2)
    gang = np.arctan2(y - gy, x - gx)
    radius = rng.uniform(0.11, 0.20)
    edema_r = _irregular_radius(rng, gang, radius * rng.uniform(1.5, 2.1), 0.35)
    mass_r = _irregular_radius(rng, gang, radius, 0.30)
    edema = _soft(edema_r - dist, 3 * w) * g["brain"]
    img = img + edema * (tissue["edema"] - img) * rng.uniform(0.5, 0.9)
    mass = _soft(mass_r - dist, w) * g["brain"]
    img = img + mass * (tissue["tumor"] - img)
    if rng.random() < 0.7:  # necrotic core
        core = _soft(mass_r * rng.uniform(0.3, 0.6) - dist, w) * g["brain"]
        img = img + core * (tissue["necrosis"] - img) * 0.8
    return img


def _meningioma(rng, x, y, img, tissue, g, w):
    """Homogeneous extra-axial mass abutting the inner table of the skull."""
    a, b = g["a"], g["b"]
    ang = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.10, 0.18)
    rim = g["brain_out"] * 0.98  # centre just inside the inner table of the skull
    mx = g["cx"] + (rim - radius / max(a, b) * 0.6) * a * np.cos(ang)
    my = g["cy"] + (rim - radius / max(a, b) * 0.6) * b * np.sin(ang)
    mr = _ellipse(x, y, mx, my, radius, radius * rng.uniform(0.75, 1.0), ang)
    mass = _soft((1 - mr) * radius, w) * g["inner"]
    return img + mass * (tissue["mening"] - img)


def _pituitary(rng, x, y, img, tissue, g, w):
    """Small round midline mass at the sellar region (anterior, near the skull base)."""
    radius = rng.uniform(0.055, 0.085)
    sx = g["cx"] + rng.uniform(-0.03, 0.03)
    sy = g["cy"] - g["b"] * rng.uniform(0.30, 0.45)  # anterior (up), sellar region
    pr = _ellipse(x, y, sx, sy, radius * rng.uniform(1.0, 1.3), radius, rng.uniform(-0.3, 0.3))
    mass = _soft((1 - pr) * radius, w)
    return img + mass * (tissue["pit"] - img)


_LESIONS = {"glioma": _glioma, "meningioma": _meningioma, "pituitary": _pituitary}


def _acquisition(rng, img, head, size):
    """Smooth texture, bias field, gain, gamma and mild thermal noise; uint8 [size, size, 1]."""
    texture = 1 + 0.05 * _smooth_field(rng, size, 0.08) + 0.02 * _smooth_field(rng, size, 0.3)
    bias = 1 + rng.uniform(0.0, 0.15) * _smooth_field(rng, size, 0.01)
    img = img * texture * bias * rng.uniform(0.85, 1.1)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    img = img + rng.normal(0, rng.uniform(0.005, 0.02), img.shape) * head
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]


def generate_split(seed: int, num_examples: int, size: int = 128, weighting: str = "mixed"):
    """Yields (index, image, label) with balanced, interleaved labels."""
    for index in range(num_examples):
        label = index % len(CLASS_NAMES)
        yield index, generate_slice(seed, index, label, size, weighting), label
