"""The DICOMweb side of `dicom-serve` (aiohttp): QIDO-RS search and WADO-RS retrieve, read-only.

Owns the routes under `/dicomweb`, the bearer-token check (the token's name is the "who" of the
audit trail), the `application/dicom+json` rendering of query answers and instance metadata,
the `multipart/related; type="application/dicom"` stream of a study, series or instance,
each part the instance's Part 10 bytes as stored, labelled with its own transfer syntax (never
transcoded), an instance's frames (`client.dicomserve.frames` cuts them), its bulk data values
(`client.dicomserve.bulkdata`, whose URIs the metadata gives) and a frame rendered as JPEG, PNG
or GIF (`client.dicomserve.rendered`). An instance that
cannot be read is left out of the stream (with an alert); a bad request is a 4xx and nothing a
client sends stops the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from client.dicomserve.audit import AuditRecord
from client.dicomserve.bulkdata import metadata_json, read_bulk
from client.dicomserve.frames import FrameError, cut_frames, parse_accept, parse_frame_list
from client.dicomserve.index import InstanceRef
from client.dicomserve.instances import part10
from client.dicomserve.query import BadQuery, Request, answer_dataset, answers
from client.dicomserve.rendered import parse_rendering, render
from client.dicomserve.service import Archive, alert

ARCHIVE = web.AppKey("archive", Archive)
WHO = "dicomserve.who"
DICOM_JSON = "application/dicom+json"
DEFAULT_LIMIT = 1000  # answers per QIDO response when the client gives no limit
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Keys a QIDO answer carries without `includefield` (PS3.18 table 10.6.3-3, those we hold).
DEFAULT_KEYS = {
    "STUDY": ("StudyDate", "AccessionNumber", "ModalitiesInStudy", "PatientName", "PatientID",
              "PatientBirthDate", "StudyInstanceUID", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle"),
    "SERIES": ("Modality", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances",
               "StudyInstanceUID"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "NumberOfFrames", "StudyInstanceUID",
              "SeriesInstanceUID"),
}  # fmt: skip
_NOT_KEYS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = request.app[ARCHIVE].config.web_tokens
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    name = _token_name(tokens, token.strip()) if scheme.lower() == "bearer" else None
    if name is None:
        what = f"{request.method} {request.path}: no valid token"
        _audit(
            request, AuditRecord("", _address(request), "refused", outcome="refused", detail=what)
        )
        return _error(401, "a valid bearer token is required")
    request[WHO] = name
    try:
        return await handler(request)
    except BadQuery as e:
        return _error(400, str(e))
    except FrameError as e:
        return _error(e.status, str(e))
    except web.HTTPException:
        raise
    except Exception as e:  # a bug must cost one request, never the server
        alert(f"{request.method} {request.path}: {type(e).__name__}: {e}")
        return _error(500, f"internal error: {type(e).__name__}")


def _token_name(tokens: dict[str, str], token: str) -> str | None:
    for known, name in tokens.items():  # compare every token in constant time
        if token and hmac.compare_digest(known.encode(), token.encode()):
            return name
    return None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


def _audit(request: web.Request, record: AuditRecord) -> None:
    request.app[ARCHIVE].audit.write(record)


# --- QIDO-RS -------------------------------------------------------------------------------------


def _query(request: web.Request, level: str) -> tuple[Request, int, int]:
    keys: dict[str, str] = dict.fromkeys(DEFAULT_KEYS[level], "")
    for name, value in request.query.items():
        if name == "includefield":
            keys.update((_keyword(f), keys.get(_keyword(f), "")) for f in value.split(","))
        elif name not in _NOT_KEYS:
            keys[_keyword(name)] = value
    for name in ("study", "series"):
        if name in request.match_info:
            keys[{"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}[name]] = (
                request.match_info[name]
            )
    keys.pop("all", None)
    return (
        Request.parse(level, keys),
        _int(request, "limit", DEFAULT_LIMIT),
        _int(request, "offset", 0),
    )


def _keyword(name: str) -> str:
    """A QIDO attribute as a keyword: `PatientID` stays, a tag `00100020` becomes its keyword."""
    from pydicom.datadict import keyword_for_tag

    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return keyword_for_tag(int(name, 16)) or name
    return name


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise BadQuery(f"{name} must be a non-negative integer")
    return int(text)


def dicom_json(answer: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = answer_dataset(answer).to_json_dict()
    doc.pop("00080052", None)  # QueryRetrieveLevel is DIMSE's, not QIDO's
    return doc


def _search(level: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        archive = request.app[ARCHIVE]
        query, limit, offset = _query(request, level)
        record = AuditRecord(request[WHO], _address(request), "QIDO-RS", level, query.keys)
        found = await asyncio.to_thread(_answers, archive, query, limit, offset)
        for answer in found:
            record.note(answer)
        if query.unsupported:
            record.detail = "unsupported keys: " + ", ".join(query.unsupported)
        _audit(request, record)
        if not found:
            return web.Response(status=204)
        body = json.dumps([dicom_json(a) for a in found])
        response = web.Response(text=body, content_type=DICOM_JSON)
        if query.unsupported:
            response.headers["Warning"] = (
                f'299 dicomvault "unsupported keys, matched as universal: '
                f'{", ".join(query.unsupported)}"'
            )
        return response

    return handler


def _answers(archive: Archive, query: Request, limit: int, offset: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    with archive.reader() as reader:
        for n, answer in enumerate(answers(reader, query, archive.config.as_of,
                                           archive.config.ae_title)):  # fmt: skip
            if n >= offset + limit:
                break
            if n >= offset:
                out.append(answer)
    return out


# --- WADO-RS -------------------------------------------------------------------------------------


def _selection(request: web.Request) -> Request:
    keys = {"StudyInstanceUID": request.match_info["study"]}
    if "series" in request.match_info:
        keys["SeriesInstanceUID"] = request.match_info["series"]
    if "instance" in request.match_info:
        keys["SOPInstanceUID"] = request.match_info["instance"]
    return Request.parse("IMAGE", keys)


async def _refs(request: web.Request, record: AuditRecord) -> list[InstanceRef]:
    selection = _selection(request)
    record.keys = selection.keys
    refs = await asyncio.to_thread(request.app[ARCHIVE].instances, selection)
    if not refs:
        record.outcome = "failed"
        _audit(request, record)
        raise web.HTTPNotFound(text=json.dumps({"error": "no such study, series or instance"}),
                               content_type="application/json")  # fmt: skip
    return refs


def _framed(
    ref: InstanceRef, read: bytes | Exception, failed: list[str]
) -> tuple[bytes, str] | None:
    """(Part 10 bytes, transfer syntax), or None (and an alert) for an instance not read."""
    try:
        if isinstance(read, Exception):
            raise read
        framed = part10(read, ref.transfer_syntax)
    except Exception as e:  # this instance is left out; the rest still arrive
        alert(f"instance {ref.sop} (/{ref.path}, snapshot {ref.snapshot[:8]}): {e}")
        failed.append(ref.sop)
        return None
    return framed.data, framed.transfer_syntax


async def retrieve(request: web.Request) -> web.StreamResponse:
    archive = request.app[ARCHIVE]
    record = AuditRecord(request[WHO], _address(request), "WADO-RS", "IMAGE")
    refs = await _refs(request, record)
    boundary = secrets.token_hex(16)
    response = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
    })  # fmt: skip
    failed: list[str] = []
    await response.prepare(request)
    # Each part's closing delimiter goes out with its data, so a streaming client can take an
    # instance as soon as it has arrived, not when the next one is ready.
    await response.write(f"--{boundary}".encode())
    done = False
    try:
        async for ref, read in archive.read_ahead(refs):
            got = _framed(ref, read, failed)
            if got is None:
                continue
            data, ts = got
            head = f"\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n"
            await response.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode())
            await response.write(data)
            await response.write(f"\r\n--{boundary}".encode())
            record.note(ref.attrs)
        done = _finish(request, record, failed, len(refs))  # before the client sees the end
        await response.write(b"--\r\n")
        await response.write_eof()
    finally:
        if not done:
            record.outcome = "cancelled"
            _finish(request, record, failed, len(refs))
    return response


def _base_url(request: web.Request) -> str:
    """This server's DICOMweb root as the client named it, for BulkDataURIs: a TLS proxy's
    `Forwarded` (RFC 7239) or `X-Forwarded-Proto`/`-Host`, else Host. A client that connected
    to our address but sent Host without the port (dicomweb-client 0.61 does) gets the port it
    connected to: a proxy in front would have sent its own name. The URIs go back only to the
    client that sent these headers, so believing them lets no one mislead anyone else."""
    forwarded = request.forwarded[0] if request.forwarded else {}
    proto = forwarded.get("proto") or request.headers.get("X-Forwarded-Proto")
    host = forwarded.get("host") or request.headers.get("X-Forwarded-Host")
    if host or proto:
        return f"{proto or request.scheme}://{host or request.host}/dicomweb"
    url = request.url.origin()
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if url.explicit_port is None and sock and url.host == sock[0] and sock[1] != url.port:
        url = url.with_port(int(sock[1]))
    return f"{url}/dicomweb"


def _finish(request: web.Request, record: AuditRecord, failed: list[str], total: int) -> bool:
    if failed:
        record.outcome = "partial" if len(failed) < total else "failed"
        record.detail = f"{len(failed)} of {total} instances could not be read"
    _audit(request, record)
    return True


async def metadata(request: web.Request) -> web.StreamResponse:
    archive = request.app[ARCHIVE]
    record = AuditRecord(request[WHO], _address(request), "WADO-RS metadata", "IMAGE")
    refs = await _refs(request, record)
    failed: list[str] = []
    docs = []
    base = _base_url(request)
    async for ref, read in archive.read_ahead(refs):
        got = _framed(ref, read, failed)
        if got is not None:
            uri = f"{base}/studies/{ref.study}/series/{ref.series}/instances/{ref.sop}"
            docs.append(await asyncio.to_thread(metadata_json, got[0], uri))
            record.note(ref.attrs)
    _finish(request, record, failed, len(refs))
    return web.Response(text=json.dumps(docs), content_type=DICOM_JSON)


async def frames(request: web.Request) -> web.StreamResponse:
    """`…/instances/{sop}/frames/{list}`: the frames asked, one octet-stream part each."""
    numbers = parse_frame_list(request.match_info["frames"])
    accepted = parse_accept(request.headers.get("Accept", ""))
    cut = await _one_instance(request, "WADO-RS frames",
                              lambda data: cut_frames(data, numbers, accepted))  # fmt: skip
    return _octet_parts(cut.transfer_syntax, cut.frames)


async def bulkdata(request: web.Request) -> web.StreamResponse:
    """`…/instances/{sop}/bulkdata/{path}`: a value the metadata gave as a BulkDataURI."""
    path = request.match_info["path"]
    accepted = parse_accept(request.headers.get("Accept", ""))
    bulk = await _one_instance(request, "WADO-RS bulkdata",
                               lambda data: read_bulk(data, path, accepted))  # fmt: skip
    return _octet_parts(bulk.transfer_syntax, bulk.parts)


async def rendered(request: web.Request) -> web.StreamResponse:
    """`…/instances/{sop}/rendered` (the first frame) and `…/frames/{n}/rendered`: an image."""
    numbers = parse_frame_list(request.match_info.get("frames", "1"))
    if len(numbers) != 1:
        raise FrameError(400, "a rendered image is one frame: ask for one frame number")
    rendering = parse_rendering(request.headers.get("Accept", ""), request.query)
    image = await _one_instance(request, "WADO-RS rendered",
                                lambda data: render(data, numbers[0], rendering))  # fmt: skip
    response = web.Response(body=image, content_type=rendering.media_type)
    if rendering.ignored:
        response.headers["Warning"] = (
            f'299 dicomvault "parameters not supported, ignored: {", ".join(rendering.ignored)}"'
        )
    return response


async def _one_instance(request: web.Request, action: str, work: Callable[[bytes], T]) -> T:
    """`work` done (in a thread) on the one instance the URL names, audited as `action`; a
    FrameError it raises is audited as failed and answered by the middleware."""
    archive = request.app[ARCHIVE]
    record = AuditRecord(request[WHO], _address(request), action, "IMAGE")
    ref = (await _refs(request, record))[0]
    failed: list[str] = []
    got = None
    async for _, read in archive.read_ahead([ref]):
        got = _framed(ref, read, failed)
    if got is None:
        _finish(request, record, failed, 1)
        raise FrameError(500, f"instance {ref.sop} could not be read")
    try:
        done = await asyncio.to_thread(work, got[0])
    except FrameError as e:
        record.outcome, record.detail = "failed", str(e)
        _audit(request, record)
        raise
    record.note(ref.attrs)
    _finish(request, record, failed, 1)
    return done


def _octet_parts(transfer_syntax: str, parts: list[bytes]) -> web.Response:
    boundary = secrets.token_hex(16)
    head = f"Content-Type: application/octet-stream; transfer-syntax={transfer_syntax}"
    body = b"".join(
        f"--{boundary}\r\n{head}\r\nContent-Length: {len(p)}\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    content_type = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return web.Response(body=body + f"--{boundary}--\r\n".encode(),
                        headers={"Content-Type": content_type})  # fmt: skip


def make_app(archive: Archive) -> web.Application:
    app = web.Application(middlewares=[auth_middleware])
    app[ARCHIVE] = archive
    study, series = "/dicomweb/studies/{study}", "/dicomweb/studies/{study}/series/{series}"
    app.router.add_get("/dicomweb/studies", _search("STUDY"))
    app.router.add_get("/dicomweb/series", _search("SERIES"))
    app.router.add_get("/dicomweb/instances", _search("IMAGE"))
    app.router.add_get(f"{study}/series", _search("SERIES"))
    app.router.add_get(f"{study}/instances", _search("IMAGE"))
    app.router.add_get(f"{series}/instances", _search("IMAGE"))
    for path in (study, series, f"{series}/instances/{{instance}}"):
        app.router.add_get(path, retrieve)
        app.router.add_get(f"{path}/metadata", metadata)
    app.router.add_get(f"{series}/instances/{{instance}}/frames/{{frames}}", frames)
    app.router.add_get(f"{series}/instances/{{instance}}/bulkdata/{{path:.+}}", bulkdata)
    app.router.add_get(f"{series}/instances/{{instance}}/rendered", rendered)
    app.router.add_get(f"{series}/instances/{{instance}}/frames/{{frames}}/rendered", rendered)
    return app


async def start_web(archive: Archive) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(archive), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, archive.config.host, archive.config.web_port or 0)
    await site.start()
    return runner, int(runner.addresses[0][1])
