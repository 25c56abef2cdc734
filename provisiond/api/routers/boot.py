"""Routes machines call while they network-boot: no token (see provisiond.deploy.boot_scripts).

- ``GET /boot/ipxe``: the entry script, chaining to ``/boot/${netX/mac}.ipxe`` (the
  NIC that booted, which need not be ``net0``);
- ``GET /boot/{mac}.ipxe``: the per-machine script from its lifecycle state (an
  unknown MAC is enrolled within its network's limits, see
  :mod:`provisiond.deploy.enrollment`);
- ``GET /meta/{uuid}/{file}``: cloud-init NoCloud seed, kickstart or preseed;
- ``GET|HEAD /images/{name}/{file}``: stored image files, with one HTTP Range,
  ``If-Range`` and ``If-None-Match``; bodies go out by ``os.sendfile`` under
  ``provisiond serve`` (see :mod:`provisiond.netboot.zerocopy`);
- ``POST /boot/callback/{uuid}?token=``: the booted OS phones home with its host key.
"""

from __future__ import annotations

import asyncio
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from provisiond.api.deps import ServicesDep, WriteSession, still_wanted
from provisiond.config import Settings
from provisiond.deploy import boot_scripts as boot
from provisiond.deploy import enrollment, image_fetch, seeds
from provisiond.errors import BadRequest
from provisiond.logging import get_logger
from provisiond.netboot.images import ImageStore
from provisiond.netboot.sendfile import (
    FileRangeResponse,
    Unsatisfiable,
    etag_matches,
    parse_range,
)
from provisiond.templates import Templates

router = APIRouter(tags=["boot"])
log = get_logger(__name__)

IPXE = "text/plain; charset=utf-8"


@lru_cache(maxsize=8)
def _templates(root: Path) -> Templates:
    return Templates(root)


def _base(request: Request, settings: Settings) -> str:
    return settings.boot_base_url(str(request.base_url))


@router.get("/boot/ipxe", response_class=PlainTextResponse)
def entry(request: Request, services: ServicesDep) -> PlainTextResponse:
    script = boot.entry_script(
        _templates(services.settings.templates_dir), _base(request, services.settings)
    )
    return PlainTextResponse(script, media_type=IPXE)


@router.get("/boot/{mac}.ipxe", response_class=PlainTextResponse)
def machine_script(mac: str, request: Request, services: ServicesDep) -> PlainTextResponse:
    """Read first; a write transaction only when serving the script writes."""
    still_wanted(request)
    settings, client = services.settings, request.client.host if request.client else ""
    script = boot.boot_script(
        services.db,
        _templates(settings.templates_dir),
        mac,
        _base(request, settings),
        network=enrollment.network_for(settings.networks, request.scope.get("server"), client),
        settings=settings,
        secrets=services.secrets,
        metrics=services.metrics,
    )
    return PlainTextResponse(script, media_type=IPXE)


@router.get("/meta/{machine}/{file}", response_class=PlainTextResponse)
def seed(
    machine: str, file: str, request: Request, services: ServicesDep, session: WriteSession
) -> PlainTextResponse:
    text = seeds.seed_file(
        session,
        _templates(services.settings.templates_dir),
        services.settings,
        machine,
        file,
        request.client.host if request.client else "",
        _base(request, services.settings),
        secrets=services.secrets,
        metrics=services.metrics,
    )
    return PlainTextResponse(text, media_type=IPXE)


#: cloud-init's phone_home posts a handful of fields.
MAX_FORM_FIELDS = 32


@router.post("/boot/callback/{machine}")
async def os_callback(
    machine: str, request: Request, services: ServicesDep, token: str = ""
) -> JSONResponse:
    """cloud-init ``phone_home`` (form-encoded) or JSON: the booted OS's SSH host key."""
    raw = await request.body()  # a few host keys: admission refuses over 16 KiB (413)
    fields = _callback_fields(raw, request.headers.get("content-type", ""))
    client = request.client.host if request.client else ""
    result = await asyncio.to_thread(_callback, services, machine, token[:128], fields, client)
    services.wake_deployer()
    return JSONResponse(result)


def _callback(
    services: ServicesDep, machine: str, token: str, fields: dict[str, str], client: str
) -> dict[str, Any]:
    with services.db.transaction() as session:
        return seeds.callback(
            session,
            services.secrets,
            services.settings,
            machine,
            token,
            fields,
            client,
            services.metrics,
        )


def _callback_fields(raw: bytes, content_type: str) -> dict[str, str]:
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type:
        try:
            data = json.loads(text or "{}")
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            raise BadRequest("callback body is not JSON", hint="post a JSON object") from None
        if not isinstance(data, dict):
            raise BadRequest("callback body must be a JSON object", hint='{"pub_key_ed25519": ...}')
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # more fields than that
        raise BadRequest(
            f"callback form has over {MAX_FORM_FIELDS} fields", hint="post only the host keys"
        ) from None
    return dict(pairs)


@router.head("/images/{name}/{file}", operation_id="image_file_head")
@router.get("/images/{name}/{file}", operation_id="image_file_get")
async def image_file(name: str, file: str, request: Request, services: ServicesDep) -> Response:
    store = ImageStore(services.settings.images_path)
    opened = store.open_file(name, file)
    head = request.method == "HEAD"
    if etag_matches(request.headers.get("if-none-match"), opened.etag):
        os.close(opened.fd)  # the client's copy is current
        return Response(status_code=304, headers={"etag": opened.etag, "accept-ranges": "bytes"})
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and (if_range != opened.etag or opened.etag.startswith("W/")):
        header = None  # a stale copy (or a weak validator, RFC 9110 13.1.5): the whole file
    try:
        wanted = parse_range(header, opened.size)
    except Unsatisfiable:
        os.close(opened.fd)
        return Response(
            status_code=416,
            headers={"content-range": f"bytes */{opened.size}", "accept-ranges": "bytes"},
        )
    record = None
    if not head and (wanted is None or wanted.start == 0) and request.client:
        # Recorded while the body is sent: the database round trip was 40% of the time
        # to first byte of 50 concurrent downloads (measured). The response ends after it.
        record = asyncio.ensure_future(_record_fetch(services, request.client.host, name, file))
    if wanted is None:
        return FileRangeResponse(opened, head=head, alongside=record)
    return FileRangeResponse(
        opened,
        start=wanted.start,
        length=wanted.length,
        status_code=206,
        head=head,
        alongside=record,
    )


async def _record_fetch(services: ServicesDep, client: str, name: str, file: str) -> None:
    """The fetch as a boot phase; a database error costs the phase, never the download."""
    try:
        await asyncio.to_thread(
            image_fetch.record_image_fetch, services.db, services.metrics, client, name, file
        )
    except Exception as exc:
        log.warning("image_fetch_not_recorded", image=f"{name}/{file}", error=repr(exc))
