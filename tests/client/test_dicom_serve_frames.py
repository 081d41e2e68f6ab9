"""WADO-RS frames from the backup (`…/instances/{sop}/frames/{list}`), as a viewer such as
OHIF asks for them: real multi-frame MR from pydicom's test data stored native, RLE, JPEG 2000
and JPEG-LS; every frame is the original's, byte for byte, as stored or decoded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from tests.client.servekit import WEB_TOKEN, Served, serving_testdata
from tests.client.test_dicom_serve_web import multipart_parts

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
SOURCES = {  # our name, the SOP instance UID's suffix -> pydicom test file (one MR, 4 syntaxes)
    "1": "emri_small.dcm",
    "2": "emri_small_RLE.dcm",
    "3": "emri_small_jpeg_2k_lossless.dcm",
    "4": "emri_small_jpeg_ls_lossless.dcm",
}
ROOT_UID = "1.2.826.0.1.3680043.10.511.9"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, list[Path]]]:
    with serving_testdata(tmp_path_factory.mktemp("frames"), SOURCES, ROOT_UID) as (s, paths):
        yield s, list(paths.values())


def url(served: Served, path: Path, frames: str) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"{served.web}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frames}")  # fmt: skip


def get(served: Served, path: Path, frames: str, accept: str | None = None) -> requests.Response:
    headers = {**AUTH, **({"Accept": accept} if accept else {})}
    return requests.get(url(served, path, frames), headers=headers, timeout=60)


def test_native_frames_are_cut_from_the_stored_pixels(served: tuple[Served, list[Path]]) -> None:
    server, paths = served
    native = pydicom.dcmread(paths[0])
    size = 64 * 64 * 2
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    client = DICOMwebClient(server.web, headers=AUTH)
    got = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[2, 10, 1]
    )
    assert got == [native.PixelData[(n - 1) * size : n * size] for n in (2, 10, 1)]
    record = server.await_audit("WADO-RS frames")
    assert record["outcome"] == "ok" and record["instances"] == [ds.SOPInstanceUID]


def test_encapsulated_frames_go_as_stored_to_a_client_that_takes_them(
    served: tuple[Served, list[Path]],
) -> None:
    server, paths = served
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        stored = list(generate_frames(ds.PixelData, number_of_frames=10))
        any_ts = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        response = get(server, path, "3,7", any_ts)
        assert response.status_code == 200, response.text
        parts = multipart_parts(response)
        assert [body for _, _, body in parts] == [stored[2], stored[6]]
        assert {ts for _, ts, _ in parts} == {str(ds.file_meta.TransferSyntaxUID)}


def test_frames_are_decoded_for_a_client_that_takes_only_native_or_refused_with_the_reason(
    served: tuple[Served, list[Path]],
) -> None:
    server, paths = served
    rle = get(server, paths[1], "4")  # no Accept: explicit VR little endian octets
    assert rle.status_code == 200, rle.text
    original = pixel_array(pydicom.dcmread(paths[0]), index=3, raw=True)
    assert multipart_parts(rle) == [("application/octet-stream", "1.2.840.10008.1.2.1",
                                     original.astype("<u2").tobytes())]  # fmt: skip
    jpeg_ls = get(server, paths[3], "1", 'multipart/related; type="application/octet-stream"')
    assert jpeg_ls.status_code == 406  # no JPEG-LS decoder for pydicom here: said, not faked
    assert "1.2.840.10008.1.2.4.80" in jpeg_ls.json()["error"]
    assert "transfer-syntax=*" in jpeg_ls.json()["error"]


@pytest.mark.parametrize(
    ("frames", "accept", "status"),
    [("11", None, 404), ("0", None, 400), ("1,x", None, 400), ("1", "image/jpeg", 406)],
)
def test_bad_frame_requests_are_answered_and_the_server_goes_on(
    served: tuple[Served, list[Path]], frames: str, accept: str | None, status: int
) -> None:
    server, paths = served
    assert get(server, paths[0], frames, accept).status_code == status
    assert get(server, paths[0], "1").status_code == 200
    assert isinstance(server, Served) and server.proc.poll() is None
