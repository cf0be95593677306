"""On-disk page store: stable file paths, atomic writes and a JSON Lines manifest.

Plain Python on purpose (no Scrapy), so that it can be unit-tested and reused by
readers of a pages directory.  Every method that touches the disk blocks; callers
on an event loop run them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import itertools
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from ._fingerprintset import FingerprintSet

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
# Every temporary file starts with this, so that leftovers of a crash are recognisable.
TEMP_PREFIX = ".asyncfetch-tmp-"
# Temporary names: a random part drawn once per process and a counter, rather than fresh
# randomness (a system call) for every page; O_EXCL still refuses any clash.
_TEMP_TOKEN = secrets.token_hex(6)
_temp_serial = itertools.count()

_SUFFIXES = {
    "text/html": ".html",
    "application/xhtml+xml": ".html",
    "application/json": ".json",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "text/plain": ".txt",
    "application/pdf": ".pdf",
}
# zlib's own default: most of level 9's ratio for a fraction of its CPU time.
_GZIP_LEVEL = 6


class ManifestRecord(TypedDict):
    url: str
    final_url: str
    status: int
    content_type: str
    size: int
    sha256: str
    path: str
    fetched_at: str


def page_relpath(url: str, content_type: str = "", *, gzipped: bool = False) -> str:
    """Return the stable path of *url*'s page, relative to the pages directory.

    The name comes only from the URL's sha256, so no URL can steer it anywhere. One
    level of 256 shards: each is made once per run, where a second level (65,536
    directories) cost a ``mkdir`` for nearly every page of a crawl, and a directory of
    a few thousand (or tens of thousands of) names is quick to search on any current
    file system.
    """
    # surrogatepass: a str URL with a lone surrogate still gets a path instead of an error.
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    media_type = content_type.partition(";")[0].strip().lower()
    suffix = _SUFFIXES.get(media_type, ".bin") + (".gz" if gzipped else "")
    return f"{digest[:2]}/{digest}{suffix}"


def resolve_under(root: str, relpath: str) -> str:
    """Return the real absolute path of *relpath* under *root*.

    Raise :exc:`ValueError` if it would land outside *root* (``..``, an absolute
    path, a symlink pointing elsewhere) or on *root* itself.
    """
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, relpath))
    if target == real_root or os.path.commonpath([real_root, target]) != real_root:
        raise ValueError(f"{relpath!r} is not inside {root!r}")
    return target


def atomic_write(path: str, data: bytes | Iterable[bytes], *, durable: bool = False) -> None:
    """Replace *path* with *data* (bytes, or chunks written as they come) so that readers
    see the old file or the new one, never a part.

    With *durable*, also fsync the data before the rename so it survives a power cut.
    """
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{_TEMP_TOKEN}-{next(_temp_serial)}")
    # os.open rather than tempfile.mkstemp: mkstemp forces mode 0600, this honours the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            for chunk in (data,) if isinstance(data, bytes) else data:
                _write_all(fd, chunk)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _record_line(record: Mapping[str, Any]) -> bytes:
    # ASCII-only JSON: a URL holding a lone surrogate still encodes, and round-trips.
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def remove_stale_temp_files(root: str) -> int:
    """Delete temporary files a crashed run left under *root*; return how many."""
    removed = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


def iter_json_lines(path: str) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSON Lines file in order, skipping torn or foreign lines
    (a missing file has none)."""
    try:
        with open(path, "rb") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
    except FileNotFoundError:
        return


def _iter_records(path: str) -> Iterator[ManifestRecord]:
    """Yield the manifest's records in file order, skipping torn or foreign lines."""
    for record in iter_json_lines(path):
        if isinstance(record.get("url"), str) and isinstance(record.get("path"), str):
            yield cast("ManifestRecord", record)


def read_manifest(path: str) -> dict[str, ManifestRecord]:
    """Return the manifest at *path* as ``{url: record}``; the last line for a URL wins."""
    return {record["url"]: record for record in _iter_records(path)}


def repair_torn_tail(path: str) -> None:
    """Cut off a last line that a crash left without its newline.

    Appending after it would glue the next record onto the torn one and lose both.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        end = os.fstat(fd).st_size
        if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
            return
        block = 64 * 1024
        start = end
        while start > 0:
            start = max(0, start - block)
            newline = os.pread(fd, min(block, end - start), start).rfind(b"\n")
            if newline != -1:
                os.ftruncate(fd, start + newline + 1)
                return
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


class JsonLines:
    """An append-only JSON Lines file that stays a sequence of whole lines
    (the manifest, the failures ledger)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        repair_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, record: Mapping[str, Any]) -> None:
        """Add *record* as one line."""
        self.extend((record,))

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add *records*, one line each, with a single ``write`` on an O_APPEND descriptor."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open")
        lines = b"".join(map(_record_line, records))
        with self._lock:
            start = os.fstat(self._fd).st_size
            written = os.write(self._fd, lines)
            if written != len(lines):
                # A short write (disk full) leaves a torn line: remove it so that the
                # file stays a sequence of whole lines.
                os.ftruncate(self._fd, start)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Manifest(JsonLines):
    """The manifest: one record per written page."""

    def compact(self) -> set[str]:
        """Rewrite the file atomically with only the last record per URL, if any URL has
        more than one.

        Return the paths that only dropped records pointed to.  On failure the
        old file is left untouched. Memory stays small for any manifest: 8 bytes a
        record to find the URLs listed more than once, then those URLs only, while the
        file is read again and rewritten line by line.
        """
        seen = FingerprintSet()
        repeated: set[bytes] = set()
        for record in _iter_records(self.path):
            key = _url_key(record["url"])
            if key in seen:
                repeated.add(key)
            else:
                seen.add(key)
        del seen
        if not repeated:
            return set()
        # The last line of each URL whose key came more than once (exact URLs now: two
        # URLs may share a key).
        last: dict[str, tuple[int, str]] = {}
        for line, record in enumerate(_iter_records(self.path)):
            if _url_key(record["url"]) in repeated:
                last[record["url"]] = (line, record["path"])
        dropped: set[str] = set()

        def kept() -> Iterator[bytes]:
            for line, record in enumerate(_iter_records(self.path)):
                final = last.get(record["url"])
                if final is None or final[0] == line:
                    yield _record_line(record)
                else:
                    dropped.add(record["path"])

        # durable: this file replaces the only list of everything ever written.
        atomic_write(self.path, kept(), durable=True)
        return dropped - {path for _, path in last.values()}


def _url_key(url: str) -> bytes:
    return hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass(frozen=True)
class PageWrite:
    """One page to store: what the manifest records about it, and its body."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    fetched_at: str


class PageStore:
    """Pages under one directory, each at a path derived from its URL, plus the manifest.

    ``write_batch`` may be called from several threads at once, provided two batches
    in flight never hold the same URL (the pipeline gives each URL one lane): a batch
    writes its files, then their manifest lines, so the last line of a URL describes
    its file only if its writes are not interleaved.
    """

    def __init__(self, root: str, *, gzipped: bool = False) -> None:
        self.root = root
        self.gzipped = gzipped
        self.manifest = Manifest(os.path.join(root, MANIFEST_NAME))
        self._real_root = ""
        #: Shard directories known to exist as real directories inside the root.
        self._shards: set[str] = set()

    def open(self) -> None:
        """Create the directory, prove it writable, clean up after a crash, open the manifest."""
        os.makedirs(self.root, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self._shards.clear()
        if removed := remove_stale_temp_files(self.root):
            logger.info(
                "Removed %d temporary files an interrupted run left in %s", removed, self.root
            )
        probe = os.path.join(self.root, TEMP_PREFIX + "probe")
        atomic_write(probe, b"probe")
        os.unlink(probe)
        self.manifest.open()

    def write(self, page: PageWrite) -> int:
        """Store one page, then list it in the manifest; return bytes written."""
        (outcome,) = self.write_batch((page,))
        if isinstance(outcome, OSError):
            raise outcome
        return outcome[0]

    def write_batch(self, pages: Sequence[PageWrite]) -> list[tuple[int, ManifestRecord] | OSError]:
        """Store each page's file, then list those written in the manifest, in order.

        Return, per page, the bytes written and its manifest record, or the OSError
        that stopped it. Each file is complete before its line is written; if the
        manifest cannot be written, the pages of the batch count as failed.
        """
        if not self._real_root:
            raise RuntimeError(f"{self.root} is not open")
        outcomes: list[tuple[int, ManifestRecord] | OSError] = []
        records: list[ManifestRecord] = []
        for page in pages:
            try:
                written, record = self._write_file(page)
            except OSError as exc:
                outcomes.append(exc)
                continue
            outcomes.append((written, record))
            records.append(record)
        if records:
            try:
                self.manifest.extend(records)
            except OSError as exc:
                return [exc] * len(pages)
        return outcomes

    def _write_file(self, page: PageWrite) -> tuple[int, ManifestRecord]:
        relpath = page_relpath(page.url, page.content_type, gzipped=self.gzipped)
        body = page.body
        data = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0) if self.gzipped else body
        atomic_write(self._path_of(relpath), data)
        record: ManifestRecord = {
            "url": page.url,
            "final_url": page.final_url,
            "status": page.status,
            "content_type": page.content_type,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "path": relpath,
            "fetched_at": page.fetched_at,
        }
        return len(data), record

    def _path_of(self, relpath: str) -> str:
        """The absolute path of *relpath*, its shard directory made and checked once.

        The name is a hash, so only a directory on the way (a symlink planted in the
        pages directory) could lead outside; the file itself is replaced, never followed.
        """
        shard = relpath[:2]
        if shard not in self._shards:
            directory = os.path.join(self._real_root, shard)
            os.makedirs(directory, exist_ok=True)
            if os.path.realpath(directory) != directory:
                raise OSError(errno.EXDEV, "leads outside the pages directory", directory)
            self._shards.add(shard)
        return os.path.join(self._real_root, relpath)

    def close(self) -> None:
        """Close and compact the manifest, then delete files no record points to any more.

        Such files exist when a URL's file name changed between runs (another
        content type, gzip switched on or off).
        """
        self.manifest.close()
        for relpath in self.manifest.compact():
            try:
                os.unlink(resolve_under(self.root, relpath))
            except FileNotFoundError:
                pass
            except ValueError:
                logger.warning(
                    "Not deleting %r: the manifest in %s points outside it", relpath, self.root
                )
