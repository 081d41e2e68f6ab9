"""WADO-RS rendered images from the backup, retrieved with `dicomweb-client` and decoded with
Pillow: pydicom's real CT, MR (single and multi-frame, enhanced CT), MONOCHROME1 CR, VOI LUT,
RGB, YBR and palette colour files. Grey images are compared with pydicom's own
`apply_modality_lut` and `apply_voi_lut` output, spread over 0-255."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from tests.client.servekit import WEB_TOKEN, Served, serving_testdata

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
ROOT_UID = "1.2.826.0.1.3680043.10.511.12"
SOURCES = {  # our name -> pydicom test file
    "ct": "CT_small.dcm",  # rescale, no window: the frame's own range
    "mr": "MR_small.dcm",  # a window
    "mr_frames": "emri_small.dcm",  # 10 frames
    "ect": "eCT_Supplemental.dcm",  # enhanced CT: rescale and window in functional groups
    "cr": "RG3_UNCR.dcm",  # MONOCHROME1, a window
    "voi_lut": "vlut_04.dcm",  # a VOI LUT Sequence
    "rgb": "US1_UNCR.dcm",
    "ybr": "examples_ybr_color.dcm",  # YBR_FULL_422 JPEG baseline, 30 frames
    "palette": "OBXXXX1A.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",  # no decoder here
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, Path]]]:
    with serving_testdata(tmp_path_factory.mktemp("rendered"), SOURCES, ROOT_UID) as served:
        yield served


def rendered(
    server: Served, path: Path, frame: int | None = None, media: str = "image/png", **params: str
) -> Image.Image:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    client = DICOMwebClient(server.web, headers=AUTH)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    if frame is None:
        data = client.retrieve_instance_rendered(*uids, media_types=(media,), params=params)
    else:
        data = client.retrieve_instance_frames_rendered(
            *uids, frame_numbers=[frame], media_types=(media,), params=params
        )
    return Image.open(io.BytesIO(data))


def url(path: Path, server: Served, tail: str = "rendered") -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"{server.web}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/{tail}")  # fmt: skip


def stored_range(ds: Any) -> np.ndarray:
    bits = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.array([low, high], dtype=np.int64)


def pydicom_grey(ds: Any, index: int = 0, window: tuple[float, float, str] | None = None) -> Any:
    """pydicom's modality LUT and VOI of a frame, its VOI output range (what the lowest and
    highest inputs map to: any value for a window, the stored range for a LUT) spread over
    0-255; no VOI: the frame's own range."""
    values = apply_modality_lut(pixel_array(ds, index=index), ds)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        low, high = values.min(), values.max()
    else:
        values = apply_voi_lut(values, ds)
        ends = apply_modality_lut(stored_range(ds), ds)
        with np.errstate(over="ignore"):  # a sigmoid of ±1e12 is its bounds, exactly
            low, high = apply_voi_lut(
                ends if "VOILUTSequence" in ds else np.array([-1e12, 1e12]), ds
            )
    grey = np.rint((values - float(low)) * (255 / (float(high) - float(low))))
    grey = np.clip(grey, 0, 255)
    return 255 - grey if ds.PhotometricInterpretation == "MONOCHROME1" else grey


def assert_grey(image: Image.Image, expected: Any) -> None:
    assert image.format == "PNG" and image.mode == "L"
    got = np.asarray(image, dtype=np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1  # rounding of a value at .5 in either computation


def test_grey_images_are_windowed_as_pydicom_windows_them(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    for name in ("ct", "mr", "voi_lut"):
        assert_grey(rendered(server, paths[name]), pydicom_grey(pydicom.dcmread(paths[name])))
    multi = pydicom.dcmread(paths["mr_frames"])
    assert_grey(rendered(server, paths["mr_frames"], frame=7), pydicom_grey(multi, index=6))
    assert_grey(rendered(server, paths["mr_frames"]), pydicom_grey(multi, index=0))
    record = server.await_audit("WADO-RS rendered")
    assert record["outcome"] == "ok" and record["instances"] == [f"{ROOT_UID}.3"]


def test_enhanced_multi_frame_takes_rescale_and_window_from_the_functional_groups(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    ds = pydicom.dcmread(paths["ect"])
    shared = ds.SharedFunctionalGroupsSequence[0]
    for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
        for elem in shared[macro][0]:
            ds[elem.tag] = elem
    assert "WindowCenter" in ds and "RescaleIntercept" in ds
    assert_grey(rendered(server, paths["ect"], frame=2), pydicom_grey(ds, index=1))


def test_monochrome1_is_inverted(served: tuple[Served, dict[str, Path]]) -> None:
    server, paths = served
    ds = pydicom.dcmread(paths["cr"])
    image = rendered(server, paths["cr"])
    assert image.size == (ds.Columns, ds.Rows)
    assert_grey(image, pydicom_grey(ds))
    plain = np.asarray(image, dtype=np.float64)
    assert plain.mean() > 128  # CR background (low stored values) shows white-ish as MONOCHROME1


@pytest.mark.parametrize(
    ("name", "window"),
    [("ct", "40,80,linear"), ("mr", "300,200,sigmoid"), ("mr", "500,100,linear-exact"),
     ("voi_lut", "100,50,linear")],
)  # fmt: skip
def test_the_window_parameter_overrides_the_instance_window(
    served: tuple[Served, dict[str, Path]], name: str, window: str
) -> None:
    server, paths = served
    center, width, function = window.split(",")
    ds = pydicom.dcmread(paths[name])
    if "VOILUTSequence" in ds:
        del ds.VOILUTSequence  # the requested window replaces the instance's VOI LUT
    dicom_function = function.upper().replace("-", "_")
    expected = pydicom_grey(ds, window=(float(center), float(width), dicom_function))
    image = rendered(server, paths[name], window=window)
    assert_grey(image, expected)
    assert np.asarray(image).tolist() != np.asarray(rendered(server, paths[name])).tolist()


def test_jpeg_is_the_default_and_quality_is_honoured(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    response = requests.get(url(paths["mr"], server), headers=AUTH, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.mode == "L"
    expected = pydicom_grey(pydicom.dcmread(paths["mr"]))
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 3  # JPEG's loss
    low = requests.get(url(paths["mr"], server) + "?quality=5", headers=AUTH, timeout=60)
    assert len(low.content) < len(response.content)
    wanted = {"Accept": "image/webp, image/png;q=0.9, image/jpeg;q=0.5", **AUTH}
    png = requests.get(url(paths["mr"], server), headers=wanted, timeout=60)
    assert png.headers["Content-Type"] == "image/png"
    other = requests.get(
        url(paths["mr"], server), headers={"Accept": "image/webp", **AUTH}, timeout=60
    )
    assert other.headers["Content-Type"] == "image/jpeg"  # the default when none is made here


def test_gif_on_request(served: tuple[Served, dict[str, Path]]) -> None:
    server, paths = served
    gif = rendered(server, paths["mr"], media="image/gif")
    assert gif.format == "GIF"
    expected = pydicom_grey(pydicom.dcmread(paths["mr"]))
    assert np.abs(np.asarray(gif.convert("L"), dtype=np.float64) - expected).max() <= 1


def test_colour_is_kept(served: tuple[Served, dict[str, Path]]) -> None:
    server, paths = served
    rgb = rendered(server, paths["rgb"])
    assert rgb.mode == "RGB"
    assert np.array_equal(np.asarray(rgb), pixel_array(pydicom.dcmread(paths["rgb"])))
    ybr = pydicom.dcmread(paths["ybr"])
    frame = rendered(server, paths["ybr"], frame=5)
    assert frame.mode == "RGB" and frame.size == (ybr.Columns, ybr.Rows)
    assert np.array_equal(np.asarray(frame), pixel_array(ybr, index=4))  # YBR shown as RGB
    palette = pydicom.dcmread(paths["palette"])
    colours = apply_color_lut(pixel_array(palette), palette)
    scaled = np.rint(colours * (255 / (2 ** (colours.dtype.itemsize * 8) - 1)))
    assert np.array_equal(np.asarray(rendered(server, paths["palette"])), scaled)


def test_a_syntax_not_decodable_here_is_refused_with_its_name(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    response = requests.get(url(paths["jpeg_ls"], server), headers=AUTH, timeout=60)
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.80" in response.json()["error"]
    assert server.await_audit("WADO-RS rendered")["outcome"] == "failed"


@pytest.mark.parametrize(
    ("tail", "accept", "status"),
    [("rendered?window=abc", None, 400), ("rendered?window=40,0,linear", None, 400),
     ("rendered?window=40,80,cubic", None, 400), ("rendered?quality=0", None, 400),
     ("rendered", "application/dicom", 406),
     ("frames/11/rendered", None, 404), ("frames/1,2/rendered", None, 400),
     ("frames/0/rendered", None, 400)],
)  # fmt: skip
def test_bad_rendered_requests_are_answered_and_the_server_goes_on(
    served: tuple[Served, dict[str, Path]], tail: str, accept: str | None, status: int
) -> None:
    server, paths = served
    headers = {**AUTH, **({"Accept": accept} if accept else {})}
    response = requests.get(url(paths["mr_frames"], server, tail), headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert requests.get(url(paths["mr_frames"], server), headers=AUTH, timeout=60).ok
    assert server.proc.poll() is None


def test_unsupported_parameters_are_ignored_and_said(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    response = requests.get(
        url(paths["mr"], server) + "?viewport=32,32&annotation=patient", headers=AUTH, timeout=60
    )
    assert response.status_code == 200
    assert "annotation, viewport" in response.headers["Warning"]
