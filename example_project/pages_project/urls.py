"""The URL rules of the ``pages`` spider: reading its URL arguments, and which links it follows.

Kept apart from the spider so that the rules (what is a comment, what is a valid URL, what is the
same host) are plain functions, testable without a crawl.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ALLOWED_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class UrlLine:
    """One meaningful line of a URL file: a URL, or the reason it is not one."""

    line_number: int
    text: str
    problem: str | None = None


def url_problem(text: str) -> str | None:
    """Why `text` is not a URL the crawl can fetch, or None when it is one."""
    try:
        parts = urlsplit(text)
        # .port parses lazily and raises on a port that is not a number or out of range.
        _ = parts.port
    except ValueError as exc:
        return f"unparsable URL: {exc}"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        shown = parts.scheme or "none"
        return f"scheme {shown!r} is not http or https"
    if not parts.hostname:
        return "URL has no host"
    if any(char.isspace() for char in text):
        return "URL contains whitespace"
    return None


def iter_url_file(path: str | Path) -> Iterator[UrlLine]:
    """The URL lines of `path`, lazily, so that a file of millions of URLs is never held whole.

    Blank lines and lines starting with ``#`` are skipped. Raises OSError or UnicodeError when
    the file cannot be read; the caller decides what that means for the crawl.
    """
    with open(path, encoding="utf-8") as lines:
        for line_number, raw in enumerate(lines, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            yield UrlLine(line_number, text, url_problem(text))


def count_url_lines(path: str | Path) -> int:
    """How many lines of `path` :func:`iter_url_file` yields (valid or not), read fast."""
    count = 0
    with open(path, "rb") as lines:
        for raw in lines:
            text = raw.strip()
            count += bool(text) and not text.startswith(b"#")
    return count


def split_url_list(value: str) -> list[UrlLine]:
    """The comma-separated URLs of ``-a start_urls=URL1,URL2``, checked like file lines."""
    texts = (part.strip() for part in value.split(","))
    return [UrlLine(0, text, url_problem(text)) for text in texts if text]


def same_host(url: str, other: str) -> bool:
    """Whether two URLs are on the same host and port, which is what link following stays on.

    The port counts because another port on the same name is another server (127.0.0.1 serves
    both the demo site and, in tests, a mock server).
    """
    a, b = urlsplit(url), urlsplit(other)
    return (a.hostname, _port(a.scheme, a.port)) == (b.hostname, _port(b.scheme, b.port))


def _port(scheme: str, port: int | None) -> int | None:
    if port is not None:
        return port
    return {"http": 80, "https": 443}.get(scheme.lower())
