"""WARC output, checked by warcio's own command-line tools (not by code of ours)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from scrapy import Request, Spider
from scrapy.http import Response
from warcio.archiveiterator import ArchiveIterator

from scrapy_asyncfetch.page import Page
from scrapy_asyncfetch.storage import MANIFEST_NAME, read_manifest
from scrapy_asyncfetch.warc import OPEN_SUFFIX, WarcEntry, WarcFiles, repair_abandoned, warc_files
from tests.conftest import asyncio_test, crawl, serve

#: A real PNG: signature, IHDR, IDAT and IEND chunks of a 1x1 image (binary, with NULs).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
HTML = b"<html><body>" + b"caf\xc3\xa9 " * 300 + b"</body></html>"


def warcio_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """warcio's own command line, from the environment running the tests."""
    executable = shutil.which("warcio", path=os.path.dirname(sys.executable))
    assert executable is not None, "warcio's console script is not installed"
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


async def site(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/html":
        return web.Response(
            body=HTML, headers={"Content-Type": "text/html; charset=utf-8", "X-Mixed-Case": "Kept"}
        )
    if path == "/png":
        return web.Response(body=PNG, content_type="image/png")
    if path == "/gzip":
        return web.Response(
            body=gzip.compress(HTML),
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )
    if path == "/chunked":
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in range(5):
            await response.write(bytes(range(256)) * (part + 1))
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response
    if path == "/redirect":
        raise web.HTTPFound("/html?via=redirect")
    raise web.HTTPNotFound()


class PagesSpider(Spider):
    name = "warcpages"

    def __init__(self, base: str, paths: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.paths = paths

    async def start(self) -> AsyncIterator[Request]:
        for path in self.paths:
            yield Request(self.base + path)

    def parse(self, response: Response) -> Any:
        yield Page.from_response(response)


PATHS = ["/html", "/png", "/gzip", "/chunked", "/redirect", "/missing"]


def settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "ASYNCFETCH_PAGES_DIR": str(tmp_path / "pages"),
        "ASYNCFETCH_WARC_DIR": str(tmp_path / "warc"),
        "LOG_LEVEL": "INFO",
        **extra,
    }


def records(path: str) -> list[Any]:
    with open(path, "rb") as stream:
        return [
            (record, record.content_stream().read())
            for record in ArchiveIterator(stream, arc2warc=False)
        ]


@asyncio_test
async def test_every_exchange_is_archived_and_verifies(tmp_path: Path) -> None:
    async with serve(site) as base:
        crawler = await crawl(PagesSpider, settings(tmp_path), base=base, paths=PATHS)
    assert crawler.stats is not None
    assert crawler.stats.get_value("finish_reason") == "finished"
    files = warc_files(str(tmp_path / "warc"))
    assert len(files) == 1
    assert not [name for name in os.listdir(tmp_path / "warc") if name.endswith(OPEN_SUFFIX)]

    # warcio's own checker: both digests of every record verify.
    checked = warcio_cli("check", "-v", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "digest pass" in checked.stdout
    assert "digest fail" not in checked.stdout
    # warcio's index lists a warcinfo, then a request and a response per exchange.
    index = [json.loads(line) for line in warcio_cli("index", *files).stdout.splitlines()]
    assert index[0]["warc-type"] == "warcinfo"
    exchanged = {base + path for path in PATHS} | {base + "/html?via=redirect"}
    for kind in ("request", "response"):
        assert {e["warc-target-uri"] for e in index if e["warc-type"] == kind} == exchanged
    # One exchange per request made: 6 URLs, plus the redirect's target.
    assert sum(e["warc-type"] == "response" for e in index) == len(PATHS) + 1

    responses: dict[str, list[Any]] = {}
    ids: dict[str, str] = {}
    concurrent = {}
    for record, payload in records(files[0]):
        headers = record.rec_headers
        if record.rec_type == "response":
            responses.setdefault(headers.get_header("WARC-Target-URI"), []).append(
                (record, payload)
            )
            ids[headers.get_header("WARC-Record-ID")] = headers.get_header("WARC-Target-URI")
        elif record.rec_type == "request":
            concurrent[headers.get_header("WARC-Concurrent-To")] = headers.get_header(
                "WARC-Target-URI"
            )
            assert record.http_headers.protocol == "GET"
            assert record.http_headers.get_header("Host") == base.split("//")[1]
    # Each request record points at the response of its own exchange.
    assert concurrent == {rid: url for rid, url in ids.items() if rid in concurrent}
    assert len(concurrent) == len(ids)

    # What the spider received (the manifest's sha256) is the archived payload, decoded.
    manifest = read_manifest(str(tmp_path / "pages" / MANIFEST_NAME))
    assert set(manifest) == {base + p for p in PATHS if p != "/missing"}
    for record in manifest.values():
        archived = [
            p for r, p in responses[record["final_url"]] if r.http_headers.get_statuscode() == "200"
        ]
        assert [hashlib.sha256(p).hexdigest() for p in archived] == [record["sha256"]]

    # As the server sent them: protocol and reason, header case, Content-Encoding kept, and
    # the body as it came, before decompression, without the chunking.
    ((html, _),) = responses[base + "/html"]
    assert html.http_headers.statusline == "200 OK"
    assert html.http_headers.protocol == "HTTP/1.1"
    assert "X-Mixed-Case: Kept" in html.http_headers.to_str()
    ((gz, decoded),) = responses[base + "/gzip"]
    assert gz.http_headers.get_header("Content-Encoding") == "gzip"
    assert decoded == HTML
    assert gzip.decompress(_raw_payload(files[0], base + "/gzip")) == HTML
    ((chunked, body),) = responses[base + "/chunked"]
    assert chunked.http_headers.get_header("Transfer-Encoding") is None
    assert body == b"".join(bytes(range(256)) * (part + 1) for part in range(5))
    ((_, image),) = responses[base + "/png"]
    assert image == PNG
    ((redirect, _),) = responses[base + "/redirect"]
    assert redirect.http_headers.statusline == "302 Found"
    ((missing, _),) = responses[base + "/missing"]
    assert missing.http_headers.statusline == "404 Not Found"


def _raw_payload(path: str, url: str) -> bytes:
    """The stored payload of *url*'s response record, with no decoding at all."""
    with open(path, "rb") as stream:
        for record in ArchiveIterator(stream):
            if (
                record.rec_type == "response"
                and record.rec_headers.get_header("WARC-Target-URI") == url
            ):
                return record.raw_stream.read()
    raise AssertionError(f"no response record for {url}")


@asyncio_test
async def test_files_rotate_at_the_size_and_each_verifies(tmp_path: Path) -> None:
    paths = [f"/png?n={n}" for n in range(40)]

    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG * 50, content_type="image/png")

    async with serve(png) as png_base:
        crawler = await crawl(
            PagesSpider,
            settings(tmp_path, ASYNCFETCH_WARC_MAX_SIZE=8_000),
            base=png_base,
            paths=paths,
        )
    assert crawler.stats is not None
    files = warc_files(str(tmp_path / "warc"))
    assert len(files) > 2
    assert len(set(files)) == len(files)
    checked = warcio_cli("check", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    urls = []
    for path in files:
        kinds = [record.rec_type for record, _ in records(path)]
        assert kinds[0] == "warcinfo"  # every file describes itself
        urls += [
            record.rec_headers.get_header("WARC-Target-URI")
            for record, _ in records(path)
            if record.rec_type == "response"
        ]
    assert sorted(urls) == sorted(png_base + p for p in paths)
    assert crawler.stats.get_value("asyncfetch/warc/records") == 2 * len(paths)


def entry(n: int) -> WarcEntry:
    return WarcEntry(
        url=f"http://127.0.0.1/{n}",
        method="GET",
        target=f"/{n}",
        request_headers=(("Host", "127.0.0.1"),),
        request_body=b"",
        protocol="HTTP/1.1",
        status=200,
        reason="OK",
        response_headers=((b"Content-Type", b"application/octet-stream"),),
        body=os.urandom(2000),
        ip_address="127.0.0.1",
        date="2026-12-04T00:00:00.000000Z",
    )


def test_a_torn_file_is_cut_to_its_whole_records_and_a_held_one_left(tmp_path: Path) -> None:
    directory = str(tmp_path)
    live = WarcFiles(directory, "live", 1 << 30, {})
    live.open()
    live.write([entry(9)])  # holds its .open file

    dead = WarcFiles(directory, "dead", 1 << 30, {})
    dead.write([entry(n) for n in range(5)])
    dead._file.close()  # type: ignore[union-attr]  # the process is gone; so is its lock
    (torn,) = [p for p in os.listdir(directory) if p.startswith("dead")]
    torn_path = tmp_path / torn
    # Killed in the middle of the last record: its gzip member is cut short.
    torn_path.write_bytes(torn_path.read_bytes()[:-700])

    repaired = repair_abandoned(directory)
    assert [os.path.basename(p) for p in repaired] == [torn[: -len(".open")]]
    assert len([p for p in os.listdir(directory) if p.endswith(OPEN_SUFFIX)]) == 1
    checked = warcio_cli("check", *repaired)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    kinds = [record.rec_type for record, _ in records(repaired[0])]
    # warcinfo, then 4 whole exchanges (response, then request); the torn 5th is gone.
    assert kinds == ["warcinfo"] + ["response", "request"] * 4
    live.close()
    assert warcio_cli("check", *live.finished).returncode == 0


def test_a_file_with_nothing_whole_is_removed(tmp_path: Path) -> None:
    path = tmp_path / ("x" + OPEN_SUFFIX)
    path.write_bytes(zlib.compress(b"x")[:3])
    assert repair_abandoned(str(tmp_path)) == []
    assert not path.exists()


@pytest.mark.parametrize("value", ["big", 0])
def test_a_bad_max_size_refuses_the_crawl(value: object, tmp_path: Path) -> None:
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    from scrapy_asyncfetch._config import RefusedComponent  # noqa: PLC0415
    from scrapy_asyncfetch.warc import WarcWriter  # noqa: PLC0415

    crawler = get_crawler(
        settings_dict={"ASYNCFETCH_WARC_DIR": str(tmp_path), "ASYNCFETCH_WARC_MAX_SIZE": value}
    )
    assert isinstance(WarcWriter.from_crawler(crawler), RefusedComponent)


@asyncio_test
async def test_exchanges_fetched_by_scrapys_handlers_are_archived_too(tmp_path: Path) -> None:
    # With the middleware off, Scrapy's own handler fetches: the records are rebuilt from
    # Scrapy's response (headers by name, reason from the status) and verify all the same.
    async with serve(site) as base:
        config = settings(tmp_path, ASYNCFETCH_ENABLED=False)
        crawler = await crawl(PagesSpider, config, base=base, paths=PATHS)
    assert crawler.stats is not None
    assert crawler.stats.get_value("asyncfetch/responses") is None
    files = warc_files(str(tmp_path / "warc"))
    checked = warcio_cli("check", "-v", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    manifest = read_manifest(str(tmp_path / "pages" / MANIFEST_NAME))
    payloads = {
        record.rec_headers.get_header("WARC-Target-URI"): payload
        for path in files
        for record, payload in records(path)
        if record.rec_type == "response"
    }
    for record in manifest.values():
        assert hashlib.sha256(payloads[record["final_url"]]).hexdigest() == record["sha256"]
