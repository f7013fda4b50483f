"""Tests for cxrgen.imaging.read_image: every fixture is built here, in tmp_path, with PIL and pydicom."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from cxrgen.imaging import SUPPORTED_SUFFIXES, ImageReadError, detect_format, read_image

DEMO_IMAGES = sorted((Path(__file__).resolve().parents[1] / "demo" / "images").glob("*.png"))


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "L"
    return np.asarray(im)


def pil_open(source) -> Image.Image:
    """Decode a file or bytes with plain Pillow (reference decoding), closing the file."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        return im.copy()


def read(path, **kwargs) -> np.ndarray:
    return pixels(read_image(path, **kwargs))


def expect_error(path, *words, **kwargs) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def save_pil(path: Path, im: Image.Image, fmt: str | None = None, **params) -> Path:
    im.save(path, format=fmt, **params)
    return path


def write_dicom(
    path: Path,
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    *,
    compress: str | None = None,
    preamble: bool = True,
    **elements,
) -> Path:
    """Write a single-frame DX DICOM holding `arr`; extra keyword arguments become data elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if compress:
        ds.compress(compress)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.preamble = None
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def write_encapsulated(path: Path, frame: bytes, rows: int, cols: int, transfer_syntax: str, bits: int,
                       photometric: str = "MONOCHROME2") -> Path:
    """Write a DICOM whose pixel data is one compressed frame made outside pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """Encode one grayscale frame as lossless JPEG (ITU-T T.81 process 14, predictor 1).

    Every difference category 0..16 gets a 5-bit Huffman code equal to the category number.
    """
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    bits: list[str] = []
    for d in ((x - pred + 32768) % 65536 - 32768).ravel().tolist():
        size = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(size, "05b"))
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)
    rows, cols = arr.shape
    sof3 = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + rows.to_bytes(2, "big") \
        + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17
    dht = b"\xff\xc4" + (36).to_bytes(2, "big") + b"\x00" + bytes(counts) + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof3 + dht + sos + bytes(data) + b"\xff\xd9"


def ramp12(rows: int = 48, cols: int = 64) -> np.ndarray:
    """A 12-bit test image with structure in both directions and its full 0..4095 range used."""
    r, c = np.mgrid[0:rows, 0:cols]
    a = (r * 61 + c * 37 + (r * c) % 97) % 4096
    a[0, 0], a[-1, -1] = 0, 4095
    return a.astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------------
# 8-bit PNG/JPEG: identical to upstream's PIL convert("L")


@pytest.mark.parametrize("path", DEMO_IMAGES, ids=lambda p: p.name)
def test_demo_images_are_returned_bit_exact(path):
    with Image.open(path) as im:
        original = np.asarray(im)
        expected = np.asarray(im.convert("L"))
    got = read(path)
    assert np.array_equal(got, expected)
    if original.ndim == 3:  # IU X-ray PNGs: RGB with three equal channels, so luma is the identity
        assert np.array_equal(original[..., 0], original[..., 1])
        assert np.array_equal(original[..., 0], original[..., 2])
        assert np.array_equal(got, original[..., 0])
    else:
        assert np.array_equal(got, original)


def test_demo_dir_has_both_rgb_and_l_pngs():
    modes = {pil_open(p).mode for p in DEMO_IMAGES}
    assert {"RGB", "L"} <= modes


def test_colour_rgb_uses_itu_601_luma(tmp_path):
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 200, 200]]], dtype=np.uint8)
    path = save_pil(tmp_path / "colour.png", Image.fromarray(arr, "RGB"))
    # (19595 R + 38470 G + 7471 B + 32768) >> 16, by hand
    assert read(path).tolist() == [[76, 150, 29, 18, 200]]


def test_rgba_and_la_drop_alpha(tmp_path):
    v = np.arange(0, 256, 17, dtype=np.uint8).reshape(2, 8)
    alpha = np.linspace(0, 255, 16).astype(np.uint8).reshape(2, 8)
    rgba = np.stack([v, v, v, alpha], axis=-1)
    la = np.stack([v, alpha], axis=-1)
    assert np.array_equal(read(save_pil(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))), v)
    assert np.array_equal(read(save_pil(tmp_path / "la.png", Image.fromarray(la, "LA"))), v)


def test_palette_image_is_expanded_through_its_palette(tmp_path):
    idx = np.arange(64, dtype=np.uint8).reshape(8, 8)
    im = Image.fromarray(idx, "P")
    im.putpalette([c for i in range(256) for c in (255 - i, 255 - i, 255 - i)])
    assert np.array_equal(read(save_pil(tmp_path / "p.png", im)), 255 - idx)
    assert np.array_equal(read(save_pil(tmp_path / "p_transparent.png", im, transparency=3)), 255 - idx)


def test_one_bit_image_becomes_0_and_255(tmp_path):
    arr = np.array([[0, 1, 1, 0]], dtype=bool)
    path = save_pil(tmp_path / "bw.png", Image.fromarray(arr))
    assert read(path).tolist() == [[0, 255, 255, 0]]


def test_cmyk_jpeg_black_ink_reads_as_dark(tmp_path):
    k = np.repeat(np.array([0, 64, 128, 192, 255], dtype=np.uint8), 16)[None, :].repeat(16, axis=0)
    zeros = np.zeros_like(k)
    im = Image.fromarray(np.stack([zeros, zeros, zeros, k], axis=-1), "CMYK")
    path = save_pil(tmp_path / "cmyk.jpg", im, "JPEG", quality=100)
    assert pil_open(path).mode == "CMYK"
    got = read(path).astype(int)
    # no cyan/magenta/yellow ink: gray = 255 - K; JPEG is lossy, so compare the centres of the flat bands
    assert np.abs(got[8, 8::16] - (255 - np.array([0, 64, 128, 192, 255]))).max() <= 2


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((32, 48), dtype=np.uint8)
    arr[:16, :16] = 255  # bright block at the top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90 degrees clockwise for display
    path = save_pil(tmp_path / "rotated.jpg", Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    stored = np.asarray(pil_open(path))
    got = read(path)
    assert got.shape == (48, 32)
    assert np.array_equal(got, np.rot90(stored, k=-1))
    assert got[:16, 16:].mean() > 200 and got[16:, :].mean() < 50  # the block is now top-right


def test_jpeg_and_tiff_and_bmp_8bit_unchanged(tmp_path):
    arr = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    for name, fmt in (("x.tif", "TIFF"), ("x.bmp", "BMP")):
        assert np.array_equal(read(save_pil(tmp_path / name, Image.fromarray(arr), fmt)), arr)
    jpg = save_pil(tmp_path / "x.jpg", Image.fromarray(arr), "JPEG", quality=90)
    assert np.array_equal(read(jpg), np.asarray(pil_open(jpg)))


# ---------------------------------------------------------------------------------------------------------------
# 16-bit and float images: mapped by their range, not truncated


def test_16bit_png_is_mapped_by_its_actual_range(tmp_path):
    arr = np.array([[1000, 1500, 2000, 3000], [2999, 1001, 1000, 2500]], dtype=np.uint16)
    path = save_pil(tmp_path / "16.png", Image.fromarray(arr))
    assert pil_open(path).mode.startswith("I;16")
    # round_half_up(255 * (v - 1000) / 2000)
    assert read(path).tolist() == [[0, 64, 128, 255], [255, 0, 0, 191]]


def test_16bit_png_with_small_values_is_stretched_not_truncated(tmp_path):
    arr = np.array([[0, 100, 200]], dtype=np.uint16)
    assert read(save_pil(tmp_path / "small.png", Image.fromarray(arr))).tolist() == [[0, 128, 255]]


def test_percentile_window(tmp_path):
    arr = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    path = save_pil(tmp_path / "ramp.png", Image.fromarray(arr))
    got = read(path, percentile_window=(1.0, 99.0)).ravel()
    # lo = 0.01 * 9999 = 99.99, hi = 0.99 * 9999 = 9899.01
    assert got[0] == 0 and got[99] == 0 and got[119] == 0 and got[120] == 1  # 0.495, 0.521
    assert got[4999] == 127  # 255 * 4899.01 / 9799.02 = 127.487
    assert got[9899] == 255 and got[9999] == 255
    assert read(path).ravel()[4999] == 127 and read(path).ravel()[5000] == 128  # full range: 127.49, 127.51


def test_percentile_window_leaves_8bit_images_alone(tmp_path):
    arr = (np.arange(256, dtype=np.uint8)).reshape(16, 16)
    path = save_pil(tmp_path / "8.png", Image.fromarray(arr))
    assert np.array_equal(read(path, percentile_window=(5, 95)), arr)


def test_float_and_int32_tiff(tmp_path):
    f = np.array([[-1.0, 0.0, 1.0, 0.5]], dtype=np.float32)
    assert read(save_pil(tmp_path / "f.tif", Image.fromarray(f, "F"))).tolist() == [[0, 128, 255, 191]]
    i = np.array([[-70000, 0, 70000, 35000]], dtype=np.int32)
    assert read(save_pil(tmp_path / "i.tif", Image.fromarray(i, "I"))).tolist() == [[0, 128, 255, 191]]
    nan = np.array([[0.0, np.nan]], dtype=np.float32)
    expect_error(save_pil(tmp_path / "nan.tif", Image.fromarray(nan, "F")), "NaN")


def test_constant_16bit_image_maps_to_zero(tmp_path):
    arr = np.full((4, 4), 777, dtype=np.uint16)
    assert read(save_pil(tmp_path / "flat.png", Image.fromarray(arr))).max() == 0


# ---------------------------------------------------------------------------------------------------------------
# Format detection by content


def test_content_decides_the_format(tmp_path):
    arr = (np.arange(64) * 3).astype(np.uint8).reshape(8, 8)
    png_named_dcm_png = save_pil(tmp_path / "1_IM-0001-4001.dcm.png", Image.fromarray(arr), "PNG")
    png_named_dcm = save_pil(tmp_path / "really_png.dcm", Image.fromarray(arr), "PNG")
    tiff_named_jpg = save_pil(tmp_path / "really_tiff.jpg", Image.fromarray(arr), "TIFF")
    for path in (png_named_dcm_png, png_named_dcm, tiff_named_jpg):
        assert np.array_equal(read(path), arr), path
    assert detect_format(png_named_dcm) == "PNG"
    assert detect_format(tiff_named_jpg) == "TIFF"
    dicom_no_suffix = write_dicom(tmp_path / "IM0001", arr)
    assert detect_format(dicom_no_suffix) == "DICOM"
    assert np.array_equal(read(dicom_no_suffix), arr)
    # every advertised suffix is one read_image really reads: write an image with it and read it back
    writers = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
    for suffix in SUPPORTED_SUFFIXES:
        path = tmp_path / f"suffix{suffix}"
        if suffix in (".dcm", ".dicom"):
            write_dicom(path, arr)
        else:
            assert suffix in writers, f"no writer for the advertised suffix {suffix}"
            save_pil(path, Image.fromarray(arr), writers[suffix])
        got = read(path)
        tol = 8 if writers.get(suffix) == "JPEG" else 0  # JPEG is lossy
        assert got.shape == arr.shape and np.abs(got.astype(int) - arr).max() <= tol, suffix


# ---------------------------------------------------------------------------------------------------------------
# Errors name the file and say what is wrong


def test_missing_empty_directory_and_not_an_image(tmp_path):
    expect_error(tmp_path / "nope.png", "not found")
    expect_error(tmp_path, "directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    expect_error(empty, "empty", "0 bytes")
    text = tmp_path / "notes.png"
    text.write_text("findings: none\n" * 20)
    expect_error(text, "not a recognised image format", "findings")
    garbage_dcm = tmp_path / "garbage.dcm"
    garbage_dcm.write_bytes(b"hello, this is not DICOM at all\n" * 10)
    expect_error(garbage_dcm, "DICOM")


def test_truncated_and_corrupt_png(tmp_path):
    arr = ((np.arange(128 * 128) * 7919) % 251).astype(np.uint8).reshape(128, 128)
    data = io.BytesIO()
    Image.fromarray(arr).save(data, "PNG")
    raw = data.getvalue()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(raw[: len(raw) // 2])
    expect_error(truncated, "PNG", "truncated")
    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(raw[:20])
    expect_error(header_only, "PNG")
    corrupt = bytearray(raw)
    corrupt[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(bytes(corrupt))
    expect_error(bad, "PNG")


def test_truncated_jpeg(tmp_path):
    arr = ((np.arange(96 * 96) * 31) % 256).astype(np.uint8).reshape(96, 96)
    data = io.BytesIO()
    Image.fromarray(arr).save(data, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    expect_error(path, "JPEG", "truncated")


def test_decompression_bomb_limit(tmp_path):
    arr = np.zeros((100, 120), dtype=np.uint8)
    png = save_pil(tmp_path / "big.png", Image.fromarray(arr))
    dcm = write_dicom(tmp_path / "big.dcm", arr)
    for path in (png, dcm):
        expect_error(path, "12,000 pixels", "limit of 11,999", max_pixels=11_999)
        assert read(path, max_pixels=12_000).shape == (100, 120)


def test_bad_arguments_raise_value_error(tmp_path):
    path = save_pil(tmp_path / "x.png", Image.fromarray(np.zeros((2, 2), dtype=np.uint8)))
    for window in ((50, 50), (-1, 99), (1, 101), (1,), "ab"):
        with pytest.raises(ValueError):
            read_image(path, percentile_window=window)
    for limit in (0, -5, 1.5):
        with pytest.raises(ValueError):
            read_image(path, max_pixels=limit)


def test_error_survives_pickling_and_single_argument_form():
    e = ImageReadError("/data/a.png", "empty file (0 bytes)")
    assert str(e) == "/data/a.png: empty file (0 bytes)" and e.path == "/data/a.png"
    copy = pickle.loads(pickle.dumps(e))
    assert str(copy) == str(e) and copy.reason == e.reason
    assert str(ImageReadError("/data/a.png: whole message")) == "/data/a.png: whole message"


# ---------------------------------------------------------------------------------------------------------------
# DICOM


def test_dicom_16bit_monochrome2_uses_actual_range(tmp_path):
    arr = np.array([[0, 1000, 65535, 32767, 32768]], dtype=np.uint16)
    path = write_dicom(tmp_path / "m2_16.dcm", arr, bits_stored=16)
    assert read(path).tolist() == [[0, 4, 255, 127, 128]]  # 3.89, 127.498, 127.502


@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome1_equals_its_monochrome2_twin(tmp_path, bits):
    m2 = ramp12() if bits == 12 else (ramp12().astype(np.uint32) * 13 + 7).astype(np.uint16)
    top = (1 << bits) - 1
    m1 = (top - m2).astype(np.uint16)
    p2 = write_dicom(tmp_path / "m2.dcm", m2, "MONOCHROME2", bits)
    p1 = write_dicom(tmp_path / "m1.dcm", m1, "MONOCHROME1", bits)
    got1, got2 = read(p1), read(p2)
    assert np.array_equal(got1, got2)
    lo, hi = int(m2.min()), int(m2.max())
    i, j = 5, 7
    assert got2[i, j] == int(np.floor(255 * (int(m2[i, j]) - lo) / (hi - lo) + 0.5))
    # reading MONOCHROME1 as if it were MONOCHROME2 would give the negative
    p1_wrong = write_dicom(tmp_path / "m1_as_m2.dcm", m1, "MONOCHROME2", bits)
    assert np.corrcoef(read(p1_wrong).ravel(), got1.ravel())[0, 1] < -0.99


def test_window_centre_width_is_honoured(tmp_path):
    arr = np.array([[1000, 1536, 1537, 1792, 2048, 2559, 3000]], dtype=np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", arr, bits_stored=12)
    windowed = write_dicom(tmp_path / "win.dcm", arr, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    # DICOM linear: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped; by hand for c=2048, w=1024
    assert read(windowed).tolist() == [[0, 0, 0, 64, 128, 255, 255]]
    assert read(plain).tolist() == [[0, 68, 68, 101, 134, 199, 255]]  # min/max 1000..3000


def test_window_multi_value_uses_the_first_pair(tmp_path):
    arr = np.array([[1536, 2048, 2559]], dtype=np.uint16)
    path = write_dicom(tmp_path / "multi.dcm", arr, bits_stored=12, WindowCenter=[2048, 100], WindowWidth=[1024, 50])
    assert read(path).tolist() == [[0, 128, 255]]


def test_window_on_monochrome1_and_its_twin(tmp_path):
    m2 = ramp12()
    m1 = (4095 - m2).astype(np.uint16)
    # window [lo, hi] on MONOCHROME1 values is the window [4095 - hi, 4095 - lo] on the twin: centre 4095 - c + 1
    p1 = write_dicom(tmp_path / "m1w.dcm", m1, "MONOCHROME1", 12, WindowCenter=1000, WindowWidth=500)
    p2 = write_dicom(tmp_path / "m2w.dcm", m2, "MONOCHROME2", 12, WindowCenter=4095 - 1000 + 1, WindowWidth=500)
    got = read(p1)
    assert np.array_equal(got, read(p2))
    values = m1.astype(int)
    assert np.all(got[values <= 750] == 255) and np.all(got[values >= 1250] == 0)  # low values are white


def test_rescale_slope_intercept_applied_before_window(tmp_path):
    stored = np.array([[250, 500, 625, 750, 0, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "rescaled.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=0, WindowWidth=1001)
    # x = 2 s - 1000 = [-500, 0, 250, 500, -1000, 7190]; window [-500.5, 499.5]
    assert read(path).tolist() == [[0, 128, 191, 255, 0, 255]]


def test_negative_rescale_slope_inverts(tmp_path):
    stored = ramp12()
    plus = write_dicom(tmp_path / "plus.dcm", stored, bits_stored=12, RescaleSlope=1, RescaleIntercept=0)
    minus = write_dicom(tmp_path / "minus.dcm", stored, bits_stored=12, RescaleSlope=-1, RescaleIntercept=0)
    assert np.array_equal(read(minus).astype(int), 255 - read(plus).astype(int))


def test_voi_lut_function_sigmoid_and_linear_exact(tmp_path):
    arr = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    sig = write_dicom(tmp_path / "sig.dcm", arr, bits_stored=12, WindowCenter=2000, WindowWidth=2000,
                      VOILUTFunction="SIGMOID")
    # 255 / (1 + exp(-(x - 2000) / 500)) = 4.59, 30.40, 127.5, 224.60, 251.20
    assert read(sig).tolist() == [[5, 30, 128, 225, 251]]
    exact = write_dicom(tmp_path / "exact.dcm", arr, bits_stored=12, WindowCenter=2000, WindowWidth=2000,
                        VOILUTFunction="LINEAR_EXACT")
    assert read(exact).tolist() == [[0, 0, 128, 255, 255]]  # [1000, 3000]: 1000 -> 0, 2000 -> 127.5


@pytest.mark.parametrize("lut_vr", ["US", "OW"])
def test_voi_lut_sequence_takes_precedence_over_window(tmp_path, lut_vr):
    first = 100
    table = [(i * i) // 65536 for i in range(4096)]  # non-linear, 0..255
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, first, 16])  # LUT Descriptor
    item.add_new(0x00283006, lut_vr, table if lut_vr == "US" else np.asarray(table, "<u2").tobytes())  # LUT Data
    arr = np.array([[0, 100, 101, 1000, 2000, 4195, 4196]], dtype=np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", arr, bits_stored=16, VOILUTSequence=[item],
                       WindowCenter=10, WindowWidth=2)
    expected = [table[0], table[0], table[1], table[900], table[1900], table[4095], table[4095]]
    assert read(path).tolist() == [expected]


def test_8bit_dicom_is_kept_as_stored(tmp_path):
    arr = (np.arange(256, dtype=np.uint8)[40:104]).reshape(8, 8)  # does not span 0..255: no stretching
    assert np.array_equal(read(write_dicom(tmp_path / "m2_8.dcm", arr, bits_stored=8)), arr)
    assert np.array_equal(read(write_dicom(tmp_path / "m1_8.dcm", arr, "MONOCHROME1", 8)), 255 - arr)


def test_signed_dicom(tmp_path):
    arr = np.array([[-1024, 0, 1023, -1]], dtype=np.int16)
    path = write_dicom(tmp_path / "signed.dcm", arr, bits_stored=12)
    assert pydicom.dcmread(path).PixelRepresentation == 1
    assert read(path).tolist() == [[0, 128, 255, 127]]  # (x + 1024) / 2047: 127.6, 127.4


def test_dicom_percentile_window_only_without_voi(tmp_path):
    arr = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    path = write_dicom(tmp_path / "p.dcm", arr, bits_stored=16)
    assert read(path, percentile_window=(1, 99)).ravel()[4999] == 127
    assert read(path, percentile_window=(1, 99)).ravel()[120] == 1
    windowed = write_dicom(tmp_path / "pw.dcm", arr, bits_stored=16, WindowCenter=5000, WindowWidth=1001)
    assert np.array_equal(read(windowed, percentile_window=(1, 99)), read(windowed))


def test_jpeg_baseline_dicom_from_pil_jpeg(tmp_path):
    arr = ((np.add.outer(np.arange(48), np.arange(64)) * 2) % 256).astype(np.uint8)
    data = io.BytesIO()
    Image.fromarray(arr).save(data, "JPEG", quality=90)
    path = write_encapsulated(tmp_path / "jpeg.dcm", data.getvalue(), 48, 64, uid.JPEGBaseline8Bit, 8)
    decoded = np.asarray(pil_open(data.getvalue()))
    got = read(path)
    assert np.abs(got.astype(int) - decoded.astype(int)).max() <= 1  # decoders may differ by one on IDCT rounding
    assert np.abs(got.astype(int) - arr.astype(int)).mean() < 3


@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg_lossless_dicom_matches_uncompressed(tmp_path, bits):
    arr = ramp12() if bits == 12 else (ramp12().astype(np.uint32) * 16 + 5).astype(np.uint16)
    frame = encode_jpeg_lossless(arr, bits)
    path = write_encapsulated(tmp_path / "jpegll.dcm", frame, *arr.shape, uid.JPEGLosslessSV1, bits, "MONOCHROME1")
    assert np.array_equal(pydicom.dcmread(path).pixel_array, arr)
    twin = write_dicom(tmp_path / "plain.dcm", arr, "MONOCHROME1", bits)
    assert np.array_equal(read(path), read(twin))


@pytest.mark.parametrize("syntax", [uid.JPEG2000Lossless, uid.RLELossless], ids=["j2k", "rle"])
def test_pydicom_compressed_dicom_matches_uncompressed(tmp_path, syntax):
    arr = ramp12()
    plain = write_dicom(tmp_path / "plain.dcm", arr, "MONOCHROME1", 12, WindowCenter=2000, WindowWidth=3000)
    packed = write_dicom(tmp_path / "packed.dcm", arr, "MONOCHROME1", 12, WindowCenter=2000, WindowWidth=3000,
                         compress=syntax)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(read(packed), read(plain))


def test_dicom_without_preamble(tmp_path):
    arr = ramp12()
    raw = write_dicom(tmp_path / "raw.dcm", arr, "MONOCHROME2", 12, preamble=False)
    assert Path(raw).read_bytes()[128:132] != b"DICM"
    full = write_dicom(tmp_path / "full.dcm", arr, "MONOCHROME2", 12)
    assert np.array_equal(read(raw), read(full))
    no_suffix = tmp_path / "IM0002"  # no preamble and no suffix: recognised by its leading (0008,xxxx) tag
    no_suffix.write_bytes(raw.read_bytes())
    assert detect_format(no_suffix) == "DICOM"
    assert np.array_equal(read(no_suffix), read(full))


def test_rgb_dicom_uses_luma(tmp_path):
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", arr, "RGB", 8)
    assert read(path).tolist() == [[76, 150, 29, 90]]


def test_ybr_jpeg_dicom_is_converted_to_rgb_before_luma(tmp_path):
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, np.arange(64) * 3, 50
    data = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(data, "JPEG", quality=95)  # stored as YCbCr 4:2:0
    path = write_encapsulated(tmp_path / "ybr.dcm", data.getvalue(), 48, 64, uid.JPEGBaseline8Bit, 8, "YBR_FULL_422")
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.save_as(path)
    reference = np.asarray(pil_open(data.getvalue()).convert("L")).astype(int)
    assert np.abs(read(path).astype(int) - reference).max() <= 2


def test_multipage_tiff_rejected_and_16bit_big_endian_tiff_read(tmp_path):
    page = Image.fromarray(np.zeros((8, 8), dtype=np.uint8))
    multi = tmp_path / "pages.tif"
    page.save(multi, save_all=True, append_images=[page])
    expect_error(multi, "TIFF", "2 frames")
    values = np.array([[0, 100, 200]], dtype=np.uint16)
    big_endian = save_pil(tmp_path / "be.tif", Image.fromarray(values).convert("I;16B"))
    assert pil_open(big_endian).mode == "I;16B"
    assert read(big_endian).tolist() == [[0, 128, 255]]


def test_dicom_rejections(tmp_path):
    frames = np.zeros((3, 8, 8), dtype=np.uint16)
    multi = write_dicom(tmp_path / "multi.dcm", frames, bits_stored=12)
    assert pydicom.dcmread(multi).NumberOfFrames == 3
    expect_error(multi, "multi-frame", "3 frames")

    palette = write_dicom(tmp_path / "palette.dcm", np.zeros((8, 8), dtype=np.uint8), "MONOCHROME2", 8,
                          PhotometricInterpretation="PALETTE COLOR")
    expect_error(palette, "PhotometricInterpretation", "PALETTE COLOR")

    zero_slope = write_dicom(tmp_path / "slope0.dcm", ramp12(), bits_stored=12, RescaleSlope=0, RescaleIntercept=5)
    expect_error(zero_slope, "RescaleSlope is 0")

    no_pixels = tmp_path / "sr.dcm"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.BasicTextSRStorage
    ds.SOPInstanceUID = uid.generate_uid()
    ds.save_as(no_pixels, enforce_file_format=True)
    expect_error(no_pixels, "no pixel data", "not an image", "Basic Text SR")


def test_truncated_dicom(tmp_path):
    full = write_dicom(tmp_path / "full.dcm", ramp12(), "MONOCHROME2", 12)
    raw = full.read_bytes()
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(raw[: len(raw) - 1000])
    expect_error(cut_pixels, "DICOM", "5144 vs 6144 bytes")
    for n in (200, 420):  # inside the file meta group; inside the data set, before Pixel Data
        cut_header = tmp_path / f"cut_header_{n}.dcm"
        cut_header.write_bytes(raw[:n])
        expect_error(cut_header, "DICOM", "no Pixel Data", "truncated")
    packed = write_dicom(tmp_path / "packed.dcm", ramp12(), "MONOCHROME2", 12, compress=uid.JPEG2000Lossless)
    cut_packed = tmp_path / "cut_packed.dcm"
    cut_packed.write_bytes(packed.read_bytes()[:-200])
    expect_error(cut_packed, "DICOM", "truncated", "End of file")


def test_damaged_files_raise_only_image_read_error(tmp_path):
    """Truncations and byte flips of every kind of file either still decode or raise ImageReadError."""
    arr = ramp12()
    sources = {
        "png8": save_pil(tmp_path / "a.png", Image.fromarray((arr >> 4).astype(np.uint8))),
        "png16": save_pil(tmp_path / "a16.png", Image.fromarray(arr)),
        "jpg": save_pil(tmp_path / "a.jpg", Image.fromarray((arr >> 4).astype(np.uint8)), "JPEG"),
        "tif": save_pil(tmp_path / "a.tif", Image.fromarray(arr.astype(np.float32), "F")),
        "dcm": write_dicom(tmp_path / "a.dcm", arr, "MONOCHROME1", 12, WindowCenter=2000, WindowWidth=1000),
        "j2k": write_dicom(tmp_path / "a_j2k.dcm", arr, "MONOCHROME2", 12, compress=uid.JPEG2000Lossless),
    }
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    for name, path in sources.items():
        raw = path.read_bytes()
        for k in range(12):
            damaged = bytearray(raw[: int(rng.integers(1, len(raw)))] if k % 2 == 0 else raw)
            if k % 2 == 1:
                for pos in rng.integers(0, len(raw), size=4):
                    damaged[pos] ^= int(rng.integers(1, 256))
            target = tmp_path / f"damaged_{name}_{k}{path.suffix}"
            target.write_bytes(bytes(damaged))
            try:
                im = read_image(target)
            except ImageReadError as e:
                assert str(e).startswith(f"{target}: ")
                outcomes["error"] += 1
            else:
                assert im.mode == "L"
                outcomes["ok"] += 1
    assert outcomes["error"] >= 30
