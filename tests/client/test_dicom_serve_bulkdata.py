"""WADO-RS bulk data from the backup: the metadata of real instances from pydicom's test data
gives each large binary value as a BulkDataURI, and `dicomweb-client` retrieves every one of
them, equal to the value in the source file (pixel data of a CT, a multi-frame MR stored native,
big endian, JPEG 2000 and JPEG-LS; overlay, private, palette and icon values)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from tests.client.servekit import WEB_TOKEN, Served, serving_testdata
from tests.client.test_dicom_serve_web import multipart_parts

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
ROOT_UID = "1.2.826.0.1.3680043.10.511.11"
SOURCES = {  # our name -> pydicom test file (SOP instance UIDs ROOT_UID.1, .2, … in order)
    "ct": "CT_small.dcm",
    "mr": "emri_small.dcm",
    "mr_be": "emri_small_big_endian.dcm",
    "mr_j2k": "emri_small_jpeg_2k_lossless.dcm",
    "mr_jls": "emri_small_jpeg_ls_lossless.dcm",
    "overlay": "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "palette": "gdcm-US-ALOKA-16.dcm",
    "palette_be": "gdcm-US-ALOKA-16_big.dcm",
}
ANY_TS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, Path]]]:
    with serving_testdata(tmp_path_factory.mktemp("bulkdata"), SOURCES, ROOT_UID) as served:
        yield served


def metadata(server: Served, path: Path) -> dict[str, Any]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    client = DICOMwebClient(server.web, headers=AUTH)
    doc: dict[str, Any] = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    return doc


def bulk(server: Served, uri: str, accept: str | None = None) -> list[bytes]:
    client = DICOMwebClient(server.web, headers=AUTH)
    if accept is None:
        return client.retrieve_bulkdata(uri)
    response = requests.get(uri, headers={**AUTH, "Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    return [body for _, _, body in multipart_parts(response)]


def test_pixel_data_is_a_bulk_data_uri_that_returns_the_stored_pixels(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    for name in ("ct", "mr"):
        doc = metadata(server, paths[name])
        uri = doc["7FE00010"]["BulkDataURI"]
        assert uri.endswith("/bulkdata/7FE00010") and "InlineBinary" not in doc["7FE00010"]
        assert bulk(server, uri) == [pydicom.dcmread(paths[name]).PixelData]
    assert metadata(server, paths["mr"])["00080018"]["Value"] == [f"{ROOT_UID}.2"]
    record = server.await_audit("WADO-RS bulkdata")
    assert record["outcome"] == "ok" and record["instances"] == [f"{ROOT_UID}.2"]


def test_big_endian_values_come_little_endian(served: tuple[Served, dict[str, Path]]) -> None:
    server, paths = served
    native = pydicom.dcmread(paths["mr"]).PixelData
    assert bulk(server, metadata(server, paths["mr_be"])["7FE00010"]["BulkDataURI"]) == [native]
    little = pydicom.dcmread(paths["palette"])
    doc = metadata(server, paths["palette_be"])
    for tag in ("00281221", "00281222", "00281223"):  # segmented palette LUT data, OW
        assert bulk(server, doc[tag]["BulkDataURI"]) == [little[int(tag, 16)].value]


def test_encapsulated_pixels_go_as_stored_frame_by_frame_or_decoded_or_refused(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    j2k = pydicom.dcmread(paths["mr_j2k"])
    uri = metadata(server, paths["mr_j2k"])["7FE00010"]["BulkDataURI"]
    assert bulk(server, uri, ANY_TS) == list(generate_frames(j2k.PixelData, number_of_frames=10))
    decoded = bulk(server, uri)  # dicomweb-client's default: octets, no transfer syntax named
    assert decoded == [pixel_array(j2k, raw=True).astype("<u2").tobytes()]
    jls_uri = metadata(server, paths["mr_jls"])["7FE00010"]["BulkDataURI"]
    refused = requests.get(jls_uri, headers=AUTH, timeout=60)
    assert refused.status_code == 406  # no JPEG-LS decoder for pydicom here: said, not faked
    assert "1.2.840.10008.1.2.4.80" in refused.json()["error"]
    assert bulk(server, jls_uri, ANY_TS)[0] == next(
        generate_frames(pydicom.dcmread(paths["mr_jls"]).PixelData, number_of_frames=10)
    )


def test_other_large_values_and_values_in_sequences_are_bulk_data_too(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    ds = pydicom.dcmread(paths["overlay"])
    doc = metadata(server, paths["overlay"])
    assert bulk(server, doc["60003000"]["BulkDataURI"]) == [ds[0x60003000].value]
    assert bulk(server, doc["00291110"]["BulkDataURI"]) == [ds[0x00291110].value]  # private OB
    icon = doc["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert icon.endswith("/bulkdata/00880200/0/7FE00010")
    assert bulk(server, icon) == [ds.IconImageSequence[0].PixelData]
    ct, doc = pydicom.dcmread(paths["ct"]), metadata(server, paths["ct"])
    assert bulk(server, doc["00431029"]["BulkDataURI"]) == [ct[0x00431029].value]  # 2068 bytes
    assert "InlineBinary" in doc["00431028"] and "BulkDataURI" not in doc["00431028"]  # 80 bytes


@pytest.mark.parametrize("path", ["7FE00011", "00100010", "00880200/3/7FE00010", "x/y", "00880200"])
def test_bad_bulk_data_paths_are_not_found_and_the_server_goes_on(
    served: tuple[Served, dict[str, Path]], path: str
) -> None:
    server, paths = served
    uri = metadata(server, paths["overlay"])["60003000"]["BulkDataURI"]
    base = uri.rsplit("/bulkdata/", 1)[0]
    assert requests.get(f"{base}/bulkdata/{path}", headers=AUTH, timeout=60).status_code == 404
    assert requests.get(uri, headers=AUTH, timeout=60).status_code == 200
    assert server.proc.poll() is None


def test_bulk_data_uris_carry_the_origin_the_client_named(
    served: tuple[Served, dict[str, Path]],
) -> None:
    server, paths = served
    ds = pydicom.dcmread(paths["ct"], stop_before_pixels=True)
    uri = (f"{server.web}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/metadata")  # fmt: skip
    named = {  # headers a proxy in front sends -> the origin the URIs must carry
        (("Host", "viewer.example"),): "http://viewer.example",
        (("Host", "viewer.example:8443"),): "http://viewer.example:8443",
        (("Host", "pacs.lan"), ("X-Forwarded-Proto", "https")): "https://pacs.lan",
        (("Forwarded", 'for=10.0.0.9;proto=https;host="pacs.example:8443"'),):
            "https://pacs.example:8443",
    }  # fmt: skip
    for headers, origin in named.items():
        doc = requests.get(uri, headers={**AUTH, **dict(headers)}, timeout=60).json()[0]
        assert doc["7FE00010"]["BulkDataURI"].startswith(f"{origin}/dicomweb/studies/")
