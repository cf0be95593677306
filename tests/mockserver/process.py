"""The server process: every listener up, one JSON line on stdout, then serve until stopped."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trustme
from aiohttp import web

from tests.mockserver.app import make_app
from tests.mockserver.faults import handle_fault_connection, handle_tls_fail_connection
from tests.mockserver.net import LOOPBACK, bind_same_port, listen
from tests.mockserver.proxy import ForwardProxy
from tests.mockserver.stats import Stats

DEFAULT_HOSTS = 4
DEFAULT_PROXY_AUTH = ("user", "pass")


def make_tls(workdir: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (written to ``workdir/ca.pem``) and a server context it signed."""
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_pem = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca_pem, context


async def wait_for_stop(stop_on_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stop_on_stdin_eof:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    await stop.wait()


async def serve(hosts: int, proxy_auth: tuple[str, str] | None, stop_on_stdin_eof: bool) -> None:
    stats = Stats()
    workdir = Path(tempfile.mkdtemp(prefix="mockserver-"))
    runner = web.AppRunner(
        make_app(stats), handler_cancellation=True, shutdown_timeout=1.0, access_log=None
    )
    servers: list[asyncio.Server] = []
    try:
        ca_pem, server_tls = make_tls(workdir)
        await runner.setup()
        http_socks = bind_same_port([f"127.0.0.{i}" for i in range(1, hosts + 1)])
        https_sock = listen(LOOPBACK, 0)
        for sock in http_socks:
            await web.SockSite(runner, sock).start()
        await web.SockSite(runner, https_sock, ssl_context=server_tls).start()

        proxy = ForwardProxy(stats, proxy_auth)
        fault = functools.partial(handle_fault_connection, stats)
        for callback in (fault, handle_tls_fail_connection, proxy.handle):
            servers.append(await asyncio.start_server(callback, LOOPBACK, 0))
        fault_port, tls_fail_port, proxy_port = (s.sockets[0].getsockname()[1] for s in servers)

        ready = {
            "http_port": http_socks[0].getsockname()[1],
            "https_port": https_sock.getsockname()[1],
            "proxy_port": proxy_port,
            "fault_port": fault_port,
            "tls_fail_port": tls_fail_port,
            "ca_pem": str(ca_pem),
            "hosts": hosts,
        }
        print(json.dumps(ready), flush=True)
        await wait_for_stop(stop_on_stdin_eof)
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_proxy_auth(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected user:pass (or '' for no auth)")
    return user, password


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, choices=range(1, 255))
    parser.add_argument(
        "--proxy-auth",
        type=parse_proxy_auth,
        default=DEFAULT_PROXY_AUTH,
        help="user:pass required by the proxy; '' disables proxy auth",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (so the server dies with its parent)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mockserver %(name)s: %(message)s")
    asyncio.run(serve(args.hosts, args.proxy_auth, args.exit_on_stdin_eof))
