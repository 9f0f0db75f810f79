"""The guard around every request deletes the request's uploads before its answer leaves.

Django closes (and so deletes) a request's temporary upload files only after the response has
been sent, so a client that had read a refusal could still find its upload in the temporary
folder for a moment (CI caught `test_8_callback_urls_inside_the_network_are_refused` seeing
one). Called as the handler calls the chain, the guard must return with the file gone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory

from lingoloop.middleware import RequestGuards


def refusing_view(seen: list[Path]):  # type: ignore[no-untyped-def]
    def view(request: HttpRequest) -> JsonResponse:
        upload = request.FILES["file"]
        seen.append(Path(upload.temporary_file_path()))
        assert seen[-1].exists()
        return JsonResponse({"error": {"code": "refused"}}, status=400)

    return view


def an_upload(folder: Path, settings) -> HttpRequest:  # type: ignore[no-untyped-def]
    folder.mkdir(exist_ok=True)
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    return RequestFactory().post(
        "/api/transcribe", {"file": SimpleUploadedFile("a.flac", b"fLaC" + b"\0" * 4096)}
    )


def test_a_refused_upload_is_gone_when_the_sync_chain_returns(tmp_path, settings):
    seen: list[Path] = []
    response = RequestGuards(refusing_view(seen))(an_upload(tmp_path / "upload-tmp", settings))

    assert response.status_code == 400
    assert len(seen) == 1
    assert list((tmp_path / "upload-tmp").iterdir()) == []


def test_a_refused_upload_is_gone_when_the_async_chain_returns(tmp_path, settings):
    seen: list[Path] = []
    view = sync_to_async(refusing_view(seen))
    response = asyncio.run(RequestGuards(view)(an_upload(tmp_path / "upload-tmp", settings)))

    assert response.status_code == 400
    assert not seen[0].exists()


def test_an_upload_the_view_moved_away_is_not_an_error(tmp_path, settings):
    kept = tmp_path / "kept"
    kept.mkdir()

    def keeping_view(request: HttpRequest) -> JsonResponse:
        upload = request.FILES["file"]
        Path(upload.temporary_file_path()).rename(kept / "audio")
        return JsonResponse({}, status=201)

    request = an_upload(tmp_path / "upload-tmp", settings)
    response = RequestGuards(keeping_view)(request)

    assert response.status_code == 201
    assert (kept / "audio").exists()
