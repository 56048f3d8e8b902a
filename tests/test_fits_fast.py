"""data.fits_fast against astropy (read_fits_cutout and astropy directly), bit for bit."""
import re

import numpy as np
import pytest
from astropy.io import fits

from data import fits_fast, lens_images
from data.lens_images import FitsTemplate, ImageFormatError

RNG = np.random.default_rng(5)


def pixels(shape=(41, 41), dtype=np.float32):
    if np.issubdtype(dtype, np.integer):
        return RNG.integers(-3000, 3000, shape).astype(dtype)
    image = RNG.normal(100, 30, shape).astype(dtype)
    image.flat[[3, 17]] = np.nan  # non-finite pixels are the caller's to replace: kept as they are
    image.flat[[5]], image.flat[[8]] = np.inf, -np.inf
    return image


def write_template(path):
    FitsTemplate("g", (41, 41), {"MAGZERO": 27.0}).write(str(path), 1234567, pixels())


def write_table(columns, path, hdus=()):
    fits.HDUList([fits.PrimaryHDU(), *hdus, fits.BinTableHDU.from_columns(columns)]).writeto(path)


def band(name="band_r", fmt="1681E", dim="(41,41)", dtype=np.float32):
    return fits.Column(name=name, format=fmt, dim=dim, array=pixels(dtype=dtype).reshape(1, -1))


def write_extra_columns(path):  # every fixed-width code before the band column
    write_table([fits.Column(name="flag", format="L", array=[True]),
                 fits.Column(name="tag", format="7A", array=["abc"]),
                 fits.Column(name="bits", format="11X", array=np.ones((1, 11), bool)),
                 fits.Column(name="n", format="B", array=[3]), fits.Column(name="s", format="2I", array=[[1, 2]]),
                 fits.Column(name="c", format="C", array=[1 + 2j]), fits.Column(name="m", format="M", array=[3j]),
                 fits.Column(name="OBJID", format="J", array=np.array([-42], np.int32)),
                 fits.Column(name="flux", format="3D", array=[[1.0, 2, 3]]), band("BAND_R")], path)


def write_tscal(path):
    # astropy 8 cannot write a scaled array column, so add TSCAL/TZERO to the header of a raw one
    write_table([band(fmt="1681I", dtype=np.int16)], path)
    with open(path, "rb") as f:
        raw = f.read()
    with fits.open(path) as hdul:
        header, info = hdul[1].header.copy(), hdul.fileinfo(1)
    header["TSCAL1"], header["TZERO1"] = 0.01, 5.0
    with open(path, "wb") as f:
        f.write(raw[:info["hdrLoc"]] + header.tostring().encode() + raw[info["datLoc"]:])


CASES = {  # name: (writer, HDU index, column or None for an image, object id)
    "template": (write_template, 1, "band_g", 1234567),
    "extra_columns": (write_extra_columns, 1, "BAND_R", -42),
    "float64_band": (lambda p: write_table([fits.Column(name="id", format="K", array=[7]),
                                            band(fmt="1681D", dtype=np.float64)], p), 1, "band_r", 7),
    "no_tdim": (lambda p: write_table([fits.Column(name="object_id", format="K", array=[9]), band(dim=None)], p),
                1, "band_r", 9),
    "no_id": (lambda p: write_table([band()], p), 1, "band_r", None),
    "int16_band": (lambda p: write_table([band(fmt="1681I", dtype=np.int16)], p), 1, "band_r", None),
    "tscal_band": (write_tscal, 1, "band_r", None),
    "second_table": (lambda p: write_table([band()], p, [fits.BinTableHDU.from_columns(
        [fits.Column(name="x", format="E", array=[1.0])]), fits.ImageHDU(np.zeros(4, np.float32))]), 3, "band_r", None),
    "image_before_table": (lambda p: write_table([band()], p, [fits.ImageHDU(pixels((5, 7)))]), 1, None, None),
    "primary_image": (lambda p: fits.PrimaryHDU(pixels()).writeto(p), 0, None, None),
    "primary_float64": (lambda p: fits.PrimaryHDU(pixels(dtype=np.float64)).writeto(p), 0, None, None),
    "uint16_image": (lambda p: fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(
        RNG.integers(0, 65535, (41, 41)).astype(np.uint16))]).writeto(p), 1, None, None),
}


def scaled_image(path, dtype, bscale, bzero):
    hdu = fits.ImageHDU(RNG.normal(0, 1e3, (41, 43)))
    hdu.scale(dtype, bscale=bscale, bzero=bzero)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


for dtype, bscale, bzero in [("int16", 0.5, 100), ("int16", 1, 7), ("int32", 0.25, -3.5), ("uint8", 8, 1000)]:
    CASES[f"scaled_{dtype}_{bscale}_{bzero}"] = (lambda p, a=(dtype, bscale, bzero): scaled_image(p, *a), 1, None, None)


FALLBACK = {"tscal_band"}  # layouts fits_fast hands to astropy


@pytest.mark.parametrize("case", CASES)
def test_same_as_astropy(case, tmp_path, monkeypatch):
    writer, index, column, object_id = CASES[case]
    path = str(tmp_path / f"{case}.fits")
    writer(path)
    calls, original = [], lens_images.read_fits_cutout
    monkeypatch.setattr(lens_images, "read_fits_cutout", lambda p: calls.append(p) or original(p))
    oid, image = fits_fast.read_cutout(path)
    assert len(calls) == (case in FALLBACK)
    ref_oid, ref = original(path)
    with fits.open(path) as hdul:
        direct = hdul[index].data if column is None else hdul[index].data[column][0]
        direct = np.array(direct, dtype=np.float32)
    assert oid == ref_oid == object_id
    assert image.dtype == np.float32 and image.shape == ref.shape == direct.shape
    assert np.array_equal(image, ref, equal_nan=True) and np.array_equal(image, direct, equal_nan=True)
    assert np.array_equal(np.isnan(image), np.isnan(direct))
    if case == "tscal_band":  # astropy did apply the scaling
        assert not np.array_equal(image, np.round(image))
    if case == "no_tdim":
        assert image.shape == (1681,)  # astropy gives 1-D without TDIM; read_object reshapes a square length


def test_read_object_without_astropy(tmp_path, monkeypatch):
    def no_astropy(path):
        raise AssertionError("astropy reader called")
    images, paths = np.stack([pixels() for _ in "grizy"]), []  # (5, 41, 41)
    for b, image in zip("grizy", images):
        paths.append(str(tmp_path / f"D1_L0000012_{b}.fits"))
        FitsTemplate(b, (41, 41), {"MAGZERO": 27.0}).write(paths[-1], 12, image)
    monkeypatch.setattr(lens_images, "read_fits_cutout", no_astropy)
    oid, cube = fits_fast.read_object(paths)
    assert oid == 12 and cube.shape == (5, 41, 41) and cube.dtype == np.float32
    assert np.array_equal(cube, images, equal_nan=True)


def test_read_object_shapes_and_ids(tmp_path):
    flat, small, other = (str(tmp_path / f"{name}.fits") for name in ("flat", "small", "other"))
    CASES["no_tdim"][0](flat)
    FitsTemplate("r", (21, 21)).write(small, 9, pixels((21, 21)))
    FitsTemplate("r", (41, 41)).write(other, 10, pixels())
    oid, cube = fits_fast.read_object([flat, flat])
    assert oid == 9 and cube.shape == (2, 41, 41)
    assert np.array_equal(cube[0].ravel(), lens_images.read_fits_cutout(flat)[1], equal_nan=True)
    with pytest.raises(ImageFormatError, match=f"^{re.escape(small)}: image shape"):
        fits_fast.read_object([flat, small])
    with pytest.raises(ImageFormatError, match=f"^{re.escape(other)}: object_id 10 differs"):
        fits_fast.read_object([flat, other])


def write_truncated(path, keep):
    write_template(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])


BAD = {
    "truncated_data": (lambda p: write_truncated(p, 2 * 2880 + 100), "truncated FITS file"),
    "truncated_header": (lambda p: write_truncated(p, 2880 + 400), "truncated FITS header"),
    "random_bytes": (lambda p: p.write_bytes(RNG.bytes(5000)), "not a FITS file"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "no_band_column": (lambda p: write_table([fits.Column(name="object_id", format="K", array=[1])], str(p)),
                       "no band_<b> table column"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # astropy's truncation warnings
@pytest.mark.parametrize("case", BAD)
def test_bad_input(case, tmp_path):
    writer, message = BAD[case]
    path = tmp_path / f"{case}.fits"
    writer(path)
    with pytest.raises(ImageFormatError, match=f"^{re.escape(str(path))}: {message}"):
        fits_fast.read_cutout(str(path))
    with pytest.raises(ImageFormatError, match=f"^{re.escape(str(path))}: "):  # astropy agrees that it is unreadable
        lens_images.read_fits_cutout(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ImageFormatError, match="^.*nope.fits: cannot read"):
        fits_fast.read_cutout(str(tmp_path / "nope.fits"))
