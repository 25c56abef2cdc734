"""Routes machines call while they network-boot: no token (see provisiond.netboot.boot).

- ``GET /boot/ipxe``: the entry script, chaining to ``/boot/${net0/mac}.ipxe``;
- ``GET /boot/{mac}.ipxe``: the per-machine script from its lifecycle state;
- ``GET /meta/{uuid}/{file}``: cloud-init NoCloud seed, kickstart or preseed;
- ``GET|HEAD /images/{name}/{file}``: stored image files, with one HTTP Range.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from provisiond.api.deps import ReadSession, ServicesDep, WriteSession
from provisiond.netboot import boot
from provisiond.netboot.images import ImageStore
from provisiond.netboot.sendfile import FileRangeResponse, Unsatisfiable, parse_range
from provisiond.templates import Templates

router = APIRouter(tags=["boot"])

IPXE = "text/plain; charset=utf-8"


@lru_cache(maxsize=8)
def _templates(root: Path) -> Templates:
    return Templates(root)


def _base(request: Request, config: boot.BootConfig) -> str:
    return config.base_url(str(request.base_url))


@router.get("/boot/ipxe", response_class=PlainTextResponse)
def entry(request: Request, services: ServicesDep) -> PlainTextResponse:
    config = boot.BootConfig.from_settings(services.settings)
    script = boot.entry_script(_templates(services.settings.templates_dir), _base(request, config))
    return PlainTextResponse(script, media_type=IPXE)


@router.get("/boot/{mac}.ipxe", response_class=PlainTextResponse)
def machine_script(
    mac: str, request: Request, services: ServicesDep, session: WriteSession
) -> PlainTextResponse:
    config = boot.BootConfig.from_settings(services.settings)
    script = boot.machine_script(
        session,
        _templates(services.settings.templates_dir),
        config,
        mac,
        _base(request, config),
        services.settings,
    )
    return PlainTextResponse(script, media_type=IPXE)


@router.get("/meta/{machine}/{file}", response_class=PlainTextResponse)
def seed(
    machine: str, file: str, request: Request, services: ServicesDep, session: ReadSession
) -> PlainTextResponse:
    config = boot.BootConfig.from_settings(services.settings)
    text = boot.seed_file(
        session,
        _templates(services.settings.templates_dir),
        config,
        machine,
        file,
        request.client.host if request.client else "",
        _base(request, config),
    )
    return PlainTextResponse(text, media_type=IPXE)


@router.head("/images/{name}/{file}", operation_id="image_file_head")
@router.get("/images/{name}/{file}", operation_id="image_file_get")
async def image_file(name: str, file: str, request: Request, services: ServicesDep) -> Response:
    store = ImageStore(boot.BootConfig.from_settings(services.settings).images_dir)
    opened = store.open_file(name, file)
    head = request.method == "HEAD"
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != opened.etag:
        header = None  # the client's copy is stale: send the whole file
    try:
        wanted = parse_range(header, opened.size)
    except Unsatisfiable:
        os.close(opened.fd)
        return Response(
            status_code=416,
            headers={"content-range": f"bytes */{opened.size}", "accept-ranges": "bytes"},
        )
    if wanted is None:
        return FileRangeResponse(opened, head=head)
    return FileRangeResponse(
        opened, start=wanted.start, length=wanted.length, status_code=206, head=head
    )
