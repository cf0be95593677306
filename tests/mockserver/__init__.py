"""Loopback test server for scrapy-asyncfetch.

Run it as a separate process from the repository root::

    python -m tests.mockserver [--hosts N] [--proxy-auth user:pass]

Once every listener is up it prints one JSON line on stdout (ports and the CA path) and then
serves until SIGTERM/SIGINT. It runs, all on loopback addresses only:

* an aiohttp app on the same port of 127.0.0.1 .. 127.0.0.N, plus an HTTPS site on 127.0.0.1
  whose certificate chains to a throwaway trustme CA;
* a raw asyncio "fault" server for misbehaviour aiohttp cannot produce;
* a "TLS fail" port that answers a TLS handshake with plain-text garbage;
* a forward proxy (absolute-form requests and CONNECT tunnels), optionally with Basic auth.

Test code uses :class:`MockServer`, which starts the process and builds URLs for it.

One module per job: ``bodies`` (what is served), ``stats`` (what the server saw), ``app``
(the aiohttp routes), ``faults`` (the raw fault and TLS-fail servers), ``proxy``, ``net``
(socket and raw HTTP helpers), ``process`` (the server process) and ``client``
(:class:`MockServer`).
"""

from tests.mockserver.bodies import COMPRESSED_TEXT, body_bytes, page_body
from tests.mockserver.client import MockServer

__all__ = ["COMPRESSED_TEXT", "MockServer", "body_bytes", "page_body"]
