"""The one decoder: every scan brainjax reads, whatever the entry point (the tfds
builders, --mode=predict and gallery, eval.ood_dirs, a deployment's onnxruntime runner),
becomes uint8 grayscale slices here, by one intensity rule. Needs numpy and PIL;
pydicom and nibabel only for their files; never JAX or TensorFlow.

Inputs (`read(path)`):
  2-D images  PNG, JPEG, BMP, TIFF, GIF, WebP: EXIF orientation applied; RGB -> luma
              (ITU-R 601, PIL's "L"); alpha composited on black; palette expanded.
  DICOM       a file (`.dcm`, or any file with the DICM marker; multi-frame files give one
              slice per frame) or a folder holding a series (split by SeriesInstanceUID,
              sorted by Image Position (Patient) along the slice normal, else by
              Instance Number). Rescale Slope / Intercept applied; MONOCHROME1 inverted.
  NIfTI       `.nii` / `.nii.gz`, 3-D: reoriented to the closest canonical (RAS)
              orientation, cut along `slice_axis` (axial, coronal, sagittal), shown
              radiologically (anterior / superior up). 4-D volumes are an error.

The intensity rule (`to_uint8`): 8-bit pixels are kept as stored. Anything else (16-bit
PNG/TIFF, float TIFF, DICOM) is made uint8 by one linear map to [0, 255]:
  * DICOM with a VOI window (Window Center / Width): the DICOM linear window function;
  * otherwise values are clipped at 0 and divided by a scale: the image's maximum for a
    2-D image (so a 16-bit file holding an 8-bit image times a constant, with maximum
    255, reads exactly as that 8-bit image), one scale for a whole volume or DICOM series
    (its 99.5th percentile of the voxels above 0 for NIfTI, the maximum for a series), so
    the slices of a volume keep their relative brightness.
Slices of a volume with less than `min_foreground` of their pixels above 5% of the scale
(no head in them) are skipped and counted.

Every slice carries its source, its index, a split group (Patient ID, else the series'
or volume's own identity, else the file) and, where the file says so, Patient ID, Study /
Series Instance UID and slice position, so that splits never put one patient or volume
on two sides.

Model input (`model_input`): the slice's longest side capped at `max_size` (Lanczos:
what a dataset build stores), then resized to the model's square size (bilinear,
antialiased): the one resize every path uses, so training and prediction see the same
uint8 array for the same file.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
MAX_SIZE = 256  # what a dataset build stores: longest side (the models train at <= 224 px)
MIN_FOREGROUND = 0.05
VOLUME_PERCENTILE = 99.5


class UnreadableImage(Exception):
    """A file that cannot be decoded; the message names why (and what to install)."""


@dataclasses.dataclass(frozen=True)
class Slice:
    pixels: np.ndarray  # uint8 [H, W]
    source: str  # the file (or series folder) it came from
    index: int  # slice / frame index within the source (0 for a 2-D image)
    group: str  # split group: all slices of one group go to one split
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    of_volume: bool = False  # one of several slices of a volume, series or multi-frame file


@dataclasses.dataclass
class Decoded:
    slices: list[Slice]
    skipped: int = 0  # slices of a volume with no head in them


def kind_of(path: str) -> str | None:
    """'image', 'dicom', 'nifti', 'dicom_series' (a folder of DICOM files) or None."""
    lower = path.lower()
    if os.path.isdir(path):
        return "dicom_series" if any(kind_of(p) == "dicom" for p in _files_in(path)) else None
    if lower.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if lower.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if os.path.basename(path).upper().startswith("DICOMDIR"):  # a media directory, not an image
        return None
    return "dicom" if has_dicom_marker(path) else None


def has_dicom_marker(path: str) -> bool:
    """The 'DICM' marker after the 128-byte preamble of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _files_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


# ------------------------------------------------------------------ intensity

def scale_to_uint8(values: np.ndarray, scale: float) -> np.ndarray:
    """The linear part of the rule: clip at 0, divide by `scale`, to [0, 255], rounded."""
    scale = float(scale) if scale > 0 else 1.0
    return (np.clip(np.asarray(values, np.float64), 0.0, scale) / scale * 255.0 + 0.5).astype(np.uint8)


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI window to [0, 255]."""
    x = np.asarray(values, np.float64)
    width = max(float(width), 1.0)
    y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (x > center - 0.5).astype(np.float64)
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint8(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The intensity rule for one array: uint8 as stored; else `scale_to_uint8` by
    `scale` (default: the array's maximum)."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    return scale_to_uint8(values, float(values.max()) if scale is None and values.size else (scale or 1.0))


# ------------------------------------------------------------------ 2-D images

def decode_image_bytes(data: bytes) -> np.ndarray:
    """File bytes of a 2-D image -> uint8 [H, W] by the module's rule. Raises UnreadableImage."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # forces a full decode: truncated files fail here
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = to_uint8(np.asarray(img))
        else:
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableImage(f"not a readable image ({type(err).__name__}: {str(err)[:160]})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise UnreadableImage(f"unexpected image shape {arr.shape}")
    return arr


def read_image(path: str) -> Decoded:
    with open(path, "rb") as f:
        pixels = decode_image_bytes(f.read())
    return Decoded([Slice(pixels, path, 0, group=path)])


# ------------------------------------------------------------------ DICOM

def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise UnreadableImage("DICOM files need pydicom: pip install 'brainjax[data]' (or pip install pydicom)") from None
    return pydicom


def _dicom_pixels(ds: Any, path: str) -> np.ndarray:
    """Pixel data with Rescale Slope / Intercept applied, float64 [frames, H, W]."""
    pydicom = _pydicom()
    try:
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        if "missing" in str(err) or "plugin" in str(err).lower() or "decompress" in str(err).lower():
            raise UnreadableImage(f"compressed as {name}, and no installed decoder reads it: pip install "
                                  "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)") from None
        raise UnreadableImage(f"pixel data unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]})") \
            from None
    except (AttributeError, ValueError, TypeError) as err:
        raise UnreadableImage(f"no readable pixel data ({type(err).__name__}: {str(err)[:120]})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if raw.ndim == 3 and frames == 1 and raw.shape[-1] in (3, 4):  # one colour frame
        raw = np.asarray(Image.fromarray(raw[..., :3].astype(np.uint8)).convert("L"))
    if raw.ndim == 4 or (raw.ndim == 3 and frames == 1):
        raise UnreadableImage(f"colour DICOM with {raw.shape} pixels is not supported; export it as grayscale")
    values = pydicom.pixels.apply_modality_lut(raw, ds).astype(np.float64)
    return values.reshape(-1, *values.shape[-2:])


def _dicom_meta(ds: Any) -> dict:
    meta = {k: str(ds.get(k)) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID") if ds.get(k)}
    position = _slice_position(ds)
    if position is not None:
        meta["SlicePosition"] = position
    if ds.get("InstanceNumber") is not None:
        meta["InstanceNumber"] = int(ds.InstanceNumber)
    return meta


def _slice_position(ds: Any) -> float | None:
    """Image Position (Patient) projected on the slice normal (row x column cosines)."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(iop) != 6:
        return None
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return float(np.dot(normal, np.asarray(ipp, float)))


def _window(ds: Any) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = lambda v: float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
    return first(center), first(width)


def _dicom_to_uint8(values: np.ndarray, ds: Any, scale: float) -> np.ndarray:
    window = _window(ds)
    out = window_to_uint8(values, *window) if window else scale_to_uint8(values, scale)
    return 255 - out if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" else out


def _group(meta: Mapping[str, Any], fallback: str) -> str:
    if meta.get("PatientID"):
        return f"patient:{meta['PatientID']}"
    if meta.get("SeriesInstanceUID"):
        return f"series:{meta['SeriesInstanceUID']}"
    return fallback


def _dcmread(path: str) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, force=not path.lower().endswith(DICOM_EXTENSIONS))
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError) as err:
        raise UnreadableImage(f"not a readable DICOM file ({type(err).__name__}: {str(err)[:120]})") from None


def read_dicom_file(path: str) -> Decoded:
    """One DICOM file: a slice per frame, one scale for all frames (no VOI window)."""
    ds = _dcmread(path)
    values = _dicom_pixels(ds, path)
    meta = _dicom_meta(ds)
    scale = float(values.max()) if values.size else 1.0
    group = _group(meta, f"file:{path}")
    return Decoded([Slice(_dicom_to_uint8(frame, ds, scale), path, i, group, meta, of_volume=len(values) > 1)
                    for i, frame in enumerate(values)])


def read_dicom_series(folder: str) -> Decoded:
    """The DICOM files of a folder, one series after another (by SeriesInstanceUID), each
    sorted along its slice normal (else by Instance Number), one scale per series."""
    series: dict[str, list] = {}
    for path in _files_in(folder):
        if kind_of(path) != "dicom":
            continue
        ds = _dcmread(path)
        if "PixelData" not in ds:  # a DICOMDIR or another file without an image
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", folder)), []).append((path, ds))
    slices = []
    for uid, members in sorted(series.items()):
        members.sort(key=lambda m: _series_order(m[1], m[0]))
        values = [(_dicom_pixels(ds, path), path, ds) for path, ds in members]
        scale = max(float(v.max()) for v, _, _ in values) if values else 1.0
        for frames, path, ds in values:
            meta = {**_dicom_meta(ds), "file": path, "frames": len(frames)}
            group = _group(meta, f"series:{uid}")
            slices += [Slice(_dicom_to_uint8(f, ds, scale), folder, len(slices), group, {**meta, "frame": k})
                       for k, f in enumerate(frames)]
    if not slices:
        raise UnreadableImage("the folder holds no DICOM file with pixel data")
    return Decoded([dataclasses.replace(s, of_volume=len(slices) > 1) for s in slices])


def _series_order(ds: Any, path: str) -> tuple:
    position = _slice_position(ds)
    if position is not None:
        return (0, position, path)
    return (1, int(ds.get("InstanceNumber") or 0), path)


# ------------------------------------------------------------------ NIfTI

def read_nifti(path: str, slice_axis: str = "axial", min_foreground: float = MIN_FOREGROUND) -> Decoded:
    """A 3-D NIfTI volume: canonical orientation, one scale, slices along `slice_axis`."""
    try:
        import nibabel as nib
    except ImportError:
        raise UnreadableImage("NIfTI files need nibabel: pip install 'brainjax[data]' (or pip install nibabel)") \
            from None
    if slice_axis not in SLICE_AXES:
        raise UnreadableImage(f"slice_axis must be one of {sorted(SLICE_AXES)}, got {slice_axis!r}")
    try:
        image = nib.as_closest_canonical(nib.load(path))
        volume = np.asarray(image.dataobj, dtype=np.float64)
    except Exception as err:  # noqa: BLE001  (nibabel raises many types for a damaged file)
        raise UnreadableImage(f"not a readable NIfTI volume ({type(err).__name__}: {str(err)[:120]})") from None
    volume = np.squeeze(volume, axis=tuple(range(3, volume.ndim))) if volume.ndim > 3 and \
        all(d == 1 for d in volume.shape[3:]) else volume
    if volume.ndim != 3:
        raise UnreadableImage(f"a {volume.ndim}-D volume {volume.shape}; brainjax reads 3-D volumes (split a 4-D "
                              "series into 3-D volumes first, e.g. with fslsplit)")
    positive = volume[volume > 0]
    scale = float(np.percentile(positive, VOLUME_PERCENTILE)) if positive.size else 1.0
    axis = SLICE_AXES[slice_axis]
    slices, skipped = [], 0
    for k in range(volume.shape[axis]):
        plane = np.rot90(np.take(volume, k, axis=axis))  # anterior / superior up
        pixels = scale_to_uint8(plane, scale)
        if np.mean(pixels > 0.05 * 255) < min_foreground:
            skipped += 1
            continue
        slices.append(Slice(pixels, path, k, f"volume:{os.path.abspath(path)}", {"slice_axis": slice_axis},
                            of_volume=True))
    return Decoded(slices, skipped)


# ------------------------------------------------------------------ entry points

def read(path: str, slice_axis: str = "axial", min_foreground: float = MIN_FOREGROUND) -> Decoded:
    """Every slice of one input (file, volume or DICOM series folder); UnreadableImage
    with one line naming the file and why."""
    kind = kind_of(path)
    try:
        if not os.path.exists(path):
            raise UnreadableImage("no such file")
        if kind == "image":
            return read_image(path)
        if kind == "dicom":
            return read_dicom_file(path)
        if kind == "dicom_series":
            return read_dicom_series(path)
        if kind == "nifti":
            return read_nifti(path, slice_axis, min_foreground)
        try:  # an image file without a known extension
            return read_image(path)
        except UnreadableImage:
            raise UnreadableImage("not an image, DICOM or NIfTI file") from None
    except UnreadableImage as err:
        raise UnreadableImage(f"{path}: {err}") from None
    except OSError as err:
        raise UnreadableImage(f"{path}: {err.strerror or err}") from None


def expand_inputs(paths: Iterable[str], keep_unknown: bool = False) -> list[str]:
    """--images entries as inputs: files as given; a folder recursively, each folder of
    DICOM files as one series input and every other supported file as its own input
    (`keep_unknown`: files of no known kind too, for a build to report as unreadable)."""
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        for dirpath, dirnames, names in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files = [os.path.join(dirpath, n) for n in sorted(names) if not n.startswith(".")]
            kinds = {f: kind_of(f) for f in files}
            if any(k == "dicom" for k in kinds.values()):
                out.append(dirpath)
            out += [f for f, k in kinds.items() if k in ("image", "nifti") or (keep_unknown and k is None)]
    return out


def cap_size(gray: np.ndarray, max_size: int = MAX_SIZE) -> np.ndarray:
    """Longest side capped at `max_size` (Lanczos, antialiased): what a build stores."""
    if max_size and max(gray.shape) > max_size:
        h, w = gray.shape
        scale = max_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(gray).resize(size, Image.LANCZOS), np.uint8)
    return gray


def as_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1] or [H, W, 3|4] -> uint8 [H, W] (luma as PIL's "L"; alpha
    composited on black)."""
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[-1] == 1:
        return pixels[..., 0]
    if pixels.shape[-1] == 4:
        rgba = Image.fromarray(pixels, "RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L"))
    return np.asarray(Image.fromarray(pixels[..., :3], "RGB").convert("L"))


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size] (bilinear, antialiased when shrinking)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), np.uint8)


def model_input(gray: np.ndarray, size: int, max_size: int = MAX_SIZE) -> np.ndarray:
    """What the model sees of a slice: uint8 [size, size, 1] (`cap_size`, then `resize`)."""
    return resize(cap_size(gray, max_size), size)[..., None]


def model_inputs(slices: Sequence[Slice], size: int, max_size: int = MAX_SIZE) -> np.ndarray:
    return np.stack([model_input(s.pixels, size, max_size) for s in slices]) if slices else \
        np.zeros((0, size, size, 1), np.uint8)
