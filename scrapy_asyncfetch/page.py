"""The item type for one fetched page."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scrapy.http import Response

# Request meta keys that describe how a page was fetched; the rest of meta is
# crawl plumbing (callbacks' state, download handler flags) not worth storing.
KEPT_META_KEYS = ("depth", "download_latency", "download_slot", "redirect_urls", "retry_times")


def original_url(meta: Mapping[str, Any], url: str) -> str:
    """The URL a request was made for, before any redirect; ``url`` (its own, or its
    response's) when it was not redirected."""
    redirect_urls = meta.get("redirect_urls")
    return redirect_urls[0] if redirect_urls else url


#: Attribute (not a field: feed exports skip it) holding a written page's manifest record.
_WRITTEN = "_asyncfetch_written"


def note_written(page: Page, record: Mapping[str, Any]) -> None:
    """The page writer wrote ``page``: keep its manifest record for the ledger (as is,
    no copy: it is done with once its manifest line is written)."""
    setattr(page, _WRITTEN, record)


def written_record(page: Page) -> Mapping[str, Any] | None:
    """The manifest record of ``page``, once the page writer wrote it."""
    record: Mapping[str, Any] | None = getattr(page, _WRITTEN, None)
    return record


def _body_to_text(body: bytes) -> str:
    # Feed exporters (JSON, JSON Lines) cannot encode bytes; base64 keeps the body exact.
    return base64.b64encode(body).decode("ascii")


@dataclass
class Page:
    """A fetched page: what was asked for, what came back, and when.

    ``headers`` maps each header name to all of its values, in order.  ``body``
    is exported by Scrapy feed exports as base64 text.
    """

    url: str
    final_url: str
    status: int
    headers: dict[str, list[str]]
    # repr=False: Scrapy logs the item (e.g. when it is dropped); a body is no log material.
    body: bytes = field(repr=False, metadata={"serializer": _body_to_text})
    fetched_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The first ``Content-Type`` header value, or ``""`` if there is none."""
        for name, values in self.headers.items():
            if name.lower() == "content-type" and values:
                return values[0]
        return ""

    @classmethod
    def from_response(cls, response: Response) -> Page:
        """Build a page from a downloaded response, timestamped now."""
        request_meta = response.request.meta if response.request is not None else {}
        return cls(
            url=original_url(request_meta, response.url),
            final_url=response.url,
            status=response.status,
            # Header bytes are ISO-8859-1 on the wire; latin-1 maps every byte, so nothing is lost.
            headers={
                name.decode("latin-1"): [value.decode("latin-1") for value in values]
                for name, values in response.headers.items()
            },
            body=response.body,
            meta={key: request_meta[key] for key in KEPT_META_KEYS if key in request_meta},
        )
