"""Read one chest X-ray image file into the 8-bit grayscale image the model's preprocessing expects.

Every dataset adapter reads pixels through :func:`read_image`. It returns a ``PIL.Image.Image`` in mode ``"L"``
(8-bit grayscale) or raises :class:`ImageReadError`, whose message starts with the file path, a colon and the
reason. No other exception type escapes for a problem with the file (bad *arguments* raise ``ValueError``).

Format detection
    The format is decided by the file's content, not its name: ``DICM`` at byte offset 128 means DICOM (this wins,
    so DICOM files whose preamble holds a TIFF header are read as DICOM); otherwise the PNG, JPEG, TIFF and BMP
    signatures are recognised. A file without any of these is read as a DICOM data set without preamble when its
    name ends in ``.dcm``/``.dicom`` or its first bytes are a little-endian group 0x0002/0x0008 tag; anything else is
    rejected. So ``1_IM-0001-4001.dcm.png`` is read as the PNG it is, and a PNG named ``x.dcm`` is read as a PNG.

Mapping to 8 bits
    *8-bit sources are returned unchanged.* PIL modes ``L`` and ``1`` (as 0/255) are kept as they are; ``LA`` loses
    its alpha; ``P``/``PA`` are expanded through their palette; every colour mode (``RGB``, ``RGBA``, ``RGBX``,
    ``CMYK``, ``YCbCr``, palette) is reduced to luma by PIL's ``convert("L")`` after dropping alpha, i.e.
    ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16`` (ITU-R 601-2). For ``R = G = B = v`` this gives exactly
    ``v``, so grayscale images saved as RGB (IU X-ray) come back bit-identical, and any 8-bit input gives the same
    pixels as ``Image.open(path).convert("L")``. A DICOM whose samples are unsigned and at most 8 bits stored, with
    no rescale (slope 1, intercept 0), no Modality LUT and no VOI transform, is likewise kept as stored
    (MONOCHROME1: ``255 - v``).

    *All other sources* (PIL modes ``I;16*``, ``I``, ``F``; every other monochrome DICOM: deeper than 8 bits,
    signed, rescaled or with a VOI transform) are mapped from a real value ``x`` to ``round_half_up(255 * t)``
    with ``t`` in [0, 1]:

    - linear window ``[lo, hi]``: ``t = clip((x - lo) / (hi - lo), 0, 1)``; if ``hi <= lo``, ``t = 1`` where
      ``x > lo`` and 0 elsewhere (so a constant image becomes all 0);
    - ``lo``/``hi`` are, in order of precedence: the DICOM VOI (below); the ``percentile_window`` percentiles of
      the image's values (numpy's linear interpolation); the image's actual minimum and maximum. Nothing is
      truncated: a 16-bit PNG using values 0..4095 is stretched over 0..255.

    For a DICOM, ``x`` is the stored value after the Modality LUT (the Modality LUT Sequence when present,
    otherwise ``x = slope * stored + intercept`` with slope 1 and intercept 0 when absent; slope 0 is an error).
    The VOI is the first item of the VOI LUT Sequence when present (``x`` is looked up in the table, nearest
    entry, and the table's own minimum and maximum are ``lo``/``hi``), otherwise the first Window Center/Width
    pair. VOI LUT Function ``LINEAR`` (the default, also used for an unknown name) uses
    ``lo = c - 0.5 - (w - 1) / 2`` and ``hi = c - 0.5 + (w - 1) / 2`` (DICOM PS3.3 C.11.2.1.2.1; identical to
    its piecewise formula), ``LINEAR_EXACT`` uses ``c -/+ w / 2`` and ``SIGMOID`` uses
    ``t = 1 / (1 + exp(-4 (x - c) / w))``. A window whose width is below 1 (below or at 0 for ``LINEAR_EXACT``
    and ``SIGMOID``) is ignored with a logged warning, and the range above is used instead.

    MONOCHROME1 (low values are white) is inverted by mapping ``-x`` through the mirrored window
    ``[-hi, -lo]`` (for SIGMOID, centre ``-c``); the result is ``255 - y`` of the MONOCHROME2 mapping except on
    exact rounding ties, and a MONOCHROME1 file and its MONOCHROME2 twin (stored values ``K - v``) give identical
    images. Presentation LUT Shape is not applied: in DX images it only restates the photometric interpretation.

    Colour DICOMs (``RGB``, ``YBR_FULL``, ``YBR_FULL_422``, ``YBR_ICT``, ``YBR_RCT``, decoded to RGB by pydicom)
    are reduced with ``convert("L")`` at 8 bits and with ``0.299 R + 0.587 G + 0.114 B`` followed by the range or
    percentile window above at higher depths; VOI and rescale are not applied to colour images. Other
    photometric interpretations (``PALETTE COLOR``, ``HSV``, ``ARGB``, ``CMYK``) and multi-frame files are
    rejected.

Other rules
    EXIF orientation is applied (JPEG, TIFF, PNG ``eXIf``). Multi-frame TIFF/PNG are rejected; an MPO JPEG is read
    as its primary image. Pixel values that are NaN or infinite are rejected. Images with more than
    ``max_pixels`` pixels are rejected before their pixel data is decoded (decompression-bomb guard); Pillow's own
    global limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top of it. 16-bit colour PNGs reach this
    module already reduced to 8 bits per channel by Pillow. Truncated PNG/JPEG/TIFF files are errors as long as
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default (False); this module never changes Pillow's globals.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageReadError", "SUPPORTED_SUFFIXES", "detect_format", "read_image"]

log = logging.getLogger(__name__)

#: File name suffixes of the supported formats (content decides the format; these are for docs and globbing).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")

DEFAULT_MAX_PIXELS = 89_478_485

_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_HEADER_BYTES = 132


class ImageReadError(Exception):
    """A file could not be read as an image. ``str(e)`` is ``"<path>: <reason>"``.

    ``path`` and ``reason`` are kept as attributes. Constructed with a single argument, that argument is taken as
    the whole message (this keeps the exception re-creatable from its text, e.g. across worker processes).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None):
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path if reason is None else f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Return ``"DICOM"``, ``"PNG"``, ``"JPEG"``, ``"TIFF"`` or ``"BMP"`` from the file's first bytes, else None.

    ``"DICOM"`` is also returned for a file without the DICM preamble whose name ends in ``.dcm``/``.dicom`` or
    whose first bytes are a little-endian (0002,xxxx) or (0008,xxxx) tag. Raises ``OSError`` if the file cannot
    be opened.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    return _format_from_header(head, Path(path).name)


def _format_from_header(head: bytes, name: str) -> str | None:
    if head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if name.lower().endswith(_DICOM_SUFFIXES) or (len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00")):
        return "DICOM"
    return None


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    percentile_window: tuple[float, float] | None = None,
) -> Image.Image:
    """Read a PNG, JPEG, TIFF, BMP or DICOM chest X-ray as an 8-bit grayscale (mode ``"L"``) image.

    See the module docstring for exactly how pixels are converted. ``max_pixels`` caps width x height before
    decoding. ``percentile_window=(p_lo, p_hi)`` (percent, ``0 <= p_lo < p_hi <= 100``) replaces the min/max range
    for sources deeper than 8 bits that carry no DICOM VOI; 8-bit sources are never windowed.

    Raises ``ImageReadError`` (message ``"<path>: <reason>"``) for a missing, empty, truncated, corrupt,
    unrecognised, oversized or unsupported file, and ``ValueError`` for invalid arguments.
    """
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if percentile_window is not None:
        percentile_window = _check_percentile_window(percentile_window)

    p = Path(path)
    try:
        if not p.exists():
            raise ImageReadError(p, "file not found")
        if p.is_dir():
            raise ImageReadError(p, "is a directory, not an image file")
        size = p.stat().st_size
        if size == 0:
            raise ImageReadError(p, "empty file (0 bytes)")
        with open(p, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except ImageReadError:
        raise
    except OSError as e:
        raise ImageReadError(p, f"cannot open file: {e.strerror or e}") from e

    fmt = _format_from_header(head, p.name)
    if fmt is None:
        raise ImageReadError(
            p, f"not a recognised image format (expected PNG, JPEG, TIFF, BMP or DICOM); "
            f"the file ({size} bytes) starts with {head[:16]!r}"
        )
    if fmt == "DICOM":
        return _read_dicom(p, max_pixels, percentile_window, has_preamble=head[128:132] == b"DICM")
    return _read_pil(p, fmt, max_pixels, percentile_window)


def _check_percentile_window(window) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"percentile_window must be a pair of numbers (p_lo, p_hi), got {window!r}") from None
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"percentile_window must satisfy 0 <= p_lo < p_hi <= 100, got {window!r}")
    return lo, hi


# ---------------------------------------------------------------------------------------------------------------
# Mapping real values to 8 bits


def _round_to_uint8(t: np.ndarray) -> np.ndarray:
    """t in [0, 1] -> round-half-up(255 t) as uint8."""
    return np.floor(t * 255.0 + 0.5).astype(np.uint8)


def _linear_t(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return (x > lo).astype(np.float64)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _value_range(x: np.ndarray, percentile_window: tuple[float, float] | None) -> tuple[float, float]:
    if percentile_window is None:
        return float(x.min()), float(x.max())
    lo, hi = np.percentile(x, percentile_window)
    return float(lo), float(hi)


def _map_linear(x: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Map values through the window [lo, hi]; invert mirrors values and window (MONOCHROME1)."""
    if invert:
        return _round_to_uint8(_linear_t(-x, -hi, -lo))
    return _round_to_uint8(_linear_t(x, lo, hi))


def _map_by_range(x: np.ndarray, percentile_window, invert: bool) -> np.ndarray:
    lo, hi = _value_range(x, percentile_window)
    return _map_linear(x, lo, hi, invert)


def _check_finite(path: Path, x: np.ndarray) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ImageReadError(path, "pixel data contains NaN or infinite values")


def _too_many_pixels(path: Path, width: int, height: int, max_pixels: int) -> ImageReadError:
    return ImageReadError(
        path, f"image of {width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
        "pixels (possible decompression bomb; raise max_pixels to allow it)"
    )


# ---------------------------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP through Pillow


def _read_pil(path: Path, fmt: str, max_pixels: int, percentile_window) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # The size check below replaces Pillow's warning; its hard error (2x its global limit) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=_PIL_FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise _too_many_pixels(path, width, height, max_pixels)
                frames = getattr(im, "n_frames", 1)
                if frames > 1 and im.format != "MPO":
                    raise ImageReadError(
                        path, f"{im.format} file contains {frames} frames; only single-frame images are supported"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return _pil_to_l(path, im, percentile_window)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"rejected by Pillow as a possible decompression bomb: {e}") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise ImageReadError(path, f"cannot decode {fmt} data (truncated or corrupt file?): {_describe(e)}") from e


def _pil_to_l(path: Path, im: Image.Image, percentile_window) -> Image.Image:
    mode = im.mode
    if mode == "L":
        return im.copy()
    if mode == "1":
        return im.convert("L")
    if mode == "LA":
        return im.getchannel("L")
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "RGBX", "CMYK"):
        im = im.convert("RGB")
        mode = "RGB"
    if mode in ("RGB", "YCbCr"):
        return im.convert("L")
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        x = np.asarray(im)
        if x.ndim != 2:
            raise ImageReadError(path, f"unexpected pixel array shape {x.shape} for mode {mode}")
        _check_finite(path, x)
        return Image.fromarray(_map_by_range(x.astype(np.float64), percentile_window, invert=False))
    raise ImageReadError(path, f"unsupported Pillow image mode {mode!r}")


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------
# DICOM through pydicom (imported on the first DICOM file: importing it takes a third of a second)


def _read_dicom(path: Path, max_pixels: int, percentile_window, has_preamble: bool) -> Image.Image:
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        # pydicom also logs these; they are kept to explain a failure.
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=not has_preamble)
        except Exception as e:
            raise ImageReadError(path, f"not a readable DICOM file (truncated or corrupt?): {_describe(e)}") from e
    notes = "; ".join(dict.fromkeys(str(w.message) for w in caught))
    if len(notes) > 300:
        notes = notes[:297] + "..."
    try:
        return _dicom_to_l(path, ds, max_pixels, percentile_window, has_preamble, notes)
    except ImageReadError:
        raise
    except Exception as e:  # pydicom converts elements lazily, so a damaged element can fail at any access
        suffix = f" [pydicom: {notes}]" if notes else ""
        raise ImageReadError(path, f"DICOM: damaged or unsupported data set: {_describe(e)}{suffix}") from e


def _dicom_to_l(path: Path, ds, max_pixels: int, percentile_window, has_preamble: bool, notes: str) -> Image.Image:
    from pydicom import uid as dicom_uid

    def fail(reason: str) -> ImageReadError:
        return ImageReadError(path, f"DICOM: {reason}" + (f" [pydicom: {notes}]" if notes else ""))

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        sop_name = str(getattr(sop, "name", "") or sop or "")
        if not has_preamble:
            raise fail("no Pixel Data element; the file has no DICM preamble and may not be DICOM at all")
        if "Image Storage" in sop_name:
            raise fail(f"no Pixel Data element although the SOP Class is {sop_name}: the file is truncated or damaged")
        if sop_name:
            raise fail(f"no Pixel Data element, so not an image (SOP Class: {sop_name})")
        raise fail(f"no Pixel Data element: not a DICOM image, or truncated ({path.stat().st_size} bytes)")
    for keyword in ("Rows", "Columns", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise fail(f"missing required element {keyword}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise fail(f"multi-frame image with {frames} frames; only single-frame images are supported")
    if rows * cols > max_pixels:
        raise _too_many_pixels(path, cols, rows, max_pixels)

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") + _COLOUR_PHOTOMETRIC:
        raise fail(
            f"unsupported PhotometricInterpretation {photometric!r} "
            f"(supported: MONOCHROME1, MONOCHROME2, {', '.join(_COLOUR_PHOTOMETRIC)})"
        )

    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid is None:  # a data set without file meta information: use the encoding it was read with
        implicit, little = ds.original_encoding
        if implicit is None:
            raise fail("no Transfer Syntax UID and the encoding cannot be inferred")
        tsuid = (
            dicom_uid.ImplicitVRLittleEndian if implicit
            else dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian
        )
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = tsuid

    try:
        arr = ds.pixel_array
    except Exception as e:
        ts_text = f"{getattr(tsuid, 'name', '') or 'unknown'} [{tsuid}]"
        raise fail(f"cannot decode pixel data (transfer syntax {ts_text}; truncated file or "
                   f"no installed decoder?): {_describe(e)}") from e

    if photometric in _COLOUR_PHOTOMETRIC:
        out = _dicom_colour(path, ds, arr, percentile_window)
    else:
        out = _dicom_monochrome(path, ds, arr, percentile_window, invert=photometric == "MONOCHROME1")
    return Image.fromarray(out)


def _dicom_colour(path: Path, ds, arr: np.ndarray, percentile_window) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(path, f"DICOM: colour image has unexpected pixel array shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(arr).convert("L"))
    _check_finite(path, arr)
    x = arr.astype(np.float64)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return _map_by_range(luma, percentile_window, invert=False)


def _dicom_monochrome(path: Path, ds, arr: np.ndarray, percentile_window, invert: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    if arr.ndim != 2:
        raise ImageReadError(path, f"DICOM: monochrome image has unexpected pixel array shape {arr.shape}")
    _check_finite(path, arr)

    slope = _number(path, ds, "RescaleSlope", 1.0)
    if slope == 0.0:
        raise ImageReadError(path, "DICOM: RescaleSlope is 0, which would make every pixel the same value")
    intercept = _number(path, ds, "RescaleIntercept", 0.0)
    has_modality_lut = bool(ds.get("ModalityLUTSequence"))
    voi_lut = bool(ds.get("VOILUTSequence"))
    window = None if voi_lut else _first_window(path, ds)

    plain_8bit = np.issubdtype(arr.dtype, np.integer) and (
        arr.dtype == np.uint8
        or (int(ds.get("BitsStored") or 16) <= 8 and int(ds.get("PixelRepresentation") or 0) == 0
            and arr.min() >= 0 and arr.max() <= 255)
    )
    if plain_8bit and not has_modality_lut and slope == 1.0 and intercept == 0.0 and not voi_lut and window is None:
        v = arr.astype(np.uint8)
        return 255 - v if invert else v

    if has_modality_lut:
        x = apply_modality_lut(arr, ds).astype(np.float64)
    else:
        x = arr.astype(np.float64) * slope + intercept

    if voi_lut:
        item = ds.VOILUTSequence[0]
        n_entries = int(item.LUTDescriptor[0]) or 65536
        first = int(item.LUTDescriptor[1])
        table = np.asarray(apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds), dtype=np.float64)
        idx = np.clip(np.rint(x) - first, 0, n_entries - 1).astype(np.intp)
        return _map_linear(table[idx], float(table.min()), float(table.max()), invert)

    if window is not None:
        centre, width, function = window
        if function == "SIGMOID":
            if invert:
                x, centre = -x, -centre
            return _round_to_uint8(1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width)))
        if function == "LINEAR_EXACT":
            lo, hi = centre - width / 2.0, centre + width / 2.0
        else:
            lo, hi = centre - 0.5 - (width - 1.0) / 2.0, centre - 0.5 + (width - 1.0) / 2.0
        return _map_linear(x, lo, hi, invert)

    return _map_by_range(x, percentile_window, invert)


def _first_window(path: Path, ds) -> tuple[float, float, str] | None:
    """The first Window Center/Width pair and the VOI LUT Function, or None if absent or unusable."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre in (None, "") or width in (None, ""):
        return None
    try:
        c = float(centre[0] if _is_multi(centre) else centre)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        log.warning("%s: unreadable Window Center/Width %r/%r ignored", path, centre, width)
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        log.warning("%s: unknown VOI LUT Function %r treated as LINEAR", path, function)
        function = "LINEAR"
    min_ok = (w >= 1.0) if function == "LINEAR" else (w > 0.0)
    if not (math.isfinite(c) and math.isfinite(w) and min_ok):
        log.warning("%s: invalid window (centre %r, width %r, %s) ignored", path, c, w, function)
        return None
    return c, w, function


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (list, tuple, MultiValue))


def _number(path: Path, ds, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value in (None, ""):
        return default
    try:
        number = float(value[0] if _is_multi(value) else value)
    except (TypeError, ValueError, IndexError):
        raise ImageReadError(path, f"DICOM: invalid {keyword} {value!r}") from None
    if not math.isfinite(number):
        raise ImageReadError(path, f"DICOM: invalid {keyword} {value!r}")
    return number
