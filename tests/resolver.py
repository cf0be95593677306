"""An aiohttp resolver for tests: names ``h<N>.test`` resolve to 127.0.0.<N>,
any other name fails as unknown, so no test ever asks a real DNS server."""

from __future__ import annotations

import re
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

_NAME = re.compile(r"h(\d{1,3})\.test")


class LoopbackResolver(AbstractResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        match = _NAME.fullmatch(host)
        if host != "localhost" and not (match and 1 <= int(match[1]) <= 254):
            raise OSError(socket.EAI_NONAME, f"Name {host} is not known to the test resolver")
        address = "127.0.0.1" if host == "localhost" else f"127.0.0.{match[1]}"  # type: ignore[index]
        result: dict[str, Any] = {
            "hostname": host,
            "host": address,
            "port": port,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        return [result]  # type: ignore[list-item]

    async def close(self) -> None:
        pass
