"""The aiohttp app: one route per behaviour the tests need from a well-formed server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from tests.mockserver.bodies import (
    COMPRESSED_TEXT,
    TYPED_BODIES,
    body_bytes,
    body_slice,
    compress,
    gzip_bomb_body,
    page_body,
)
from tests.mockserver.net import abort_with_rst
from tests.mockserver.stats import Stats

_CONTROL_PATHS = frozenset({"/__stats", "/__reset"})
_PIECE = 256 * 1024  # what /bytes/{n} writes at a time

STATS_KEY = web.AppKey("stats", Stats)
routes = web.RouteTableDef()


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in _CONTROL_PATHS:
        return await handler(request)
    with request.app[STATS_KEY].track(request.headers.get("Host", ""), request.path):
        return await handler(request)


@routes.get("/__stats")
async def stats_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].as_json())


@routes.post("/__reset")
async def reset_view(request: web.Request) -> web.Response:
    request.app[STATS_KEY].reset()
    return web.Response(text="reset")


@routes.route("*", "/echo")
@routes.route("*", "/echo/{tail:.*}")
async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    raw_path = request.raw_path
    headers = [
        [name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers
    ]
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": raw_path.partition("?")[2],
            "url": raw_path,
            "headers": headers,
            "body_b64": base64.b64encode(body).decode("ascii"),
            # The client's address, to check which local address it bound to.
            "remote": request.remote,
        }
    )


@routes.route("*", r"/status/{code:\d+}")
async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}")


@routes.route("*", "/delay/{seconds}")
async def delay(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.Response(text="ok")


@routes.route("*", r"/redirect/{n:\d+}")
async def redirect(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    if n == 0:
        return web.Response(text="done")
    return web.Response(status=302, headers={"Location": f"/redirect/{n - 1}"})


@routes.route("*", "/redirect-to")
async def redirect_to(request: web.Request) -> web.Response:
    if "url" not in request.query:
        return web.Response(status=400, text="url parameter required")
    code = int(request.query.get("status", "302"))
    return web.Response(status=code, headers={"Location": request.query["url"]})


@routes.route("*", "/redirect-loop")
async def redirect_loop(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/redirect-loop"})


@routes.route("*", "/compressed/{encoding}")
async def compressed(request: web.Request) -> web.Response:
    encoding = request.match_info["encoding"]
    body = compress(encoding, COMPRESSED_TEXT)
    if body is None:
        raise web.HTTPNotFound(text=f"unknown encoding {encoding}")
    headers = {"Content-Type": "text/plain", "Content-Encoding": encoding}
    return web.Response(body=body, headers=headers)


@routes.route("*", "/setcookie")
async def setcookie(request: web.Request) -> web.Response:
    name = request.query.get("name", "name")
    value = request.query.get("value", "value")
    return web.Response(text="ok", headers={"Set-Cookie": f"{name}={value}; Path=/"})


@routes.route("*", "/cookies")
async def cookies(request: web.Request) -> web.Response:
    return web.Response(text="; ".join(request.headers.getall("Cookie", [])))


@routes.route("*", r"/bytes/{n:\d+}")
async def bytes_view(request: web.Request) -> web.StreamResponse:
    # Headers first, then the body piece by piece, as a server sends a large
    # file: a client refusing the announced size is not kept waiting while a
    # loaded machine builds 64 MiB.
    size = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    for start in range(0, size, _PIECE):
        await response.write(body_slice(start, min(size, start + _PIECE)))
    await response.write_eof()
    return response


@routes.route("*", r"/stream/{n:\d+}")
async def stream(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["n"])
    chunk = max(1, int(request.query.get("chunk", "4096")))
    pause = float(request.query.get("delay", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, size, chunk):
        if start:
            await asyncio.sleep(pause)
        await response.write(body_slice(start, min(size, start + chunk)))
    await response.write_eof()
    return response


@routes.route("*", "/drip")
async def drip(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("bytes", "10"))
    interval = float(request.query.get("interval", "0.5"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = count
    await response.prepare(request)
    # aiohttp holds the headers back until the first body write, so the first byte goes at once.
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        await response.write(b"*")
    await response.write_eof()
    return response


@routes.route("*", "/headers-multi")
async def headers_multi(request: web.Request) -> web.Response:
    response = web.Response(text="multi")
    response.headers.add("Set-Cookie", "first=1; Path=/")
    response.headers.add("Set-Cookie", "second=2; Path=/")
    response.headers.add("X-Multi", "a")
    response.headers.add("X-Multi", "b")
    return response


async def typed_body(request: web.Request) -> web.Response:
    content_type, body = TYPED_BODIES[request.path]
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.route("*", r"/page/{i:\d+}")
async def page(request: web.Request) -> web.Response:
    body = page_body(int(request.match_info["i"]))
    return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8"})


@routes.route("*", "/reset-mid-body")
async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 100_000
    await response.prepare(request)
    await response.write(body_bytes(1000))
    await asyncio.sleep(0.2)  # let the client take in headers and data before the RST
    abort_with_rst(request.transport)
    return response


@routes.route("*", "/truncated")
async def truncated(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(body_bytes(10))
    if request.transport is not None:
        request.transport.close()  # a FIN after the pending bytes are flushed
    return response


@routes.route("*", r"/retry-after/{code:\d+}")
async def retry_after(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"Retry-After": request.query["after"]} if "after" in request.query else {}
    return web.Response(status=code, text=f"status {code}", headers=headers)


@routes.route("*", "/bad-gzip")
async def bad_gzip(request: web.Request) -> web.Response:
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    return web.Response(body=b"this is definitely not gzip data" * 4, headers=headers)


@routes.route("*", "/gzip-bomb")
async def gzip_bomb(request: web.Request) -> web.Response:
    size_mib = int(request.query.get("size", "1024"))
    body = await asyncio.to_thread(gzip_bomb_body, size_mib)
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
    return web.Response(body=body, headers=headers)


@routes.route("*", "/endless")
async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = body_bytes(64 * 1024)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(chunk)
            # write() only suspends when the transport is paused; a fast reader would
            # otherwise starve the event loop.
            await asyncio.sleep(0)
    return response


def make_app(stats: Stats) -> web.Application:
    app = web.Application(middlewares=[track_requests])
    app[STATS_KEY] = stats
    app.router.add_routes(routes)
    for path in TYPED_BODIES:
        app.router.add_route("*", path, typed_body)
    return app
