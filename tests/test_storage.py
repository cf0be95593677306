"""Unit tests for the on-disk page store: real files under tmp_path, no Scrapy."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import resource
import signal
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scrapy_asyncfetch.storage import (
    MANIFEST_NAME,
    TEMP_PREFIX,
    Manifest,
    PageStore,
    PageWrite,
    atomic_write,
    page_relpath,
    read_manifest,
    repair_torn_tail,
    resolve_under,
)

FETCHED_AT = "2025-01-01T00:00:00+00:00"
NASTY_URLS = [
    "http://example.com/../../etc/passwd",
    "../../../../etc/passwd",
    "/etc/passwd",
    "http://example.com/a/%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "http://example.com/..%5C..%5Cwindows",
    "file:///etc/passwd",
    "http://example.com/" + "a" * 10_000,
    "http://пример.испытание/страница?q=ü",
    "http://example.com/\x00nul",
    "http://example.com/\ud800lone-surrogate",
    "",
]
RELPATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.[a-z]+(\.gz)?$")


def write(store: PageStore, url: str, body: bytes, content_type: str = "text/html") -> int:
    return store.write(page(url, body, content_type))


def page(url: str, body: bytes, content_type: str = "text/html") -> PageWrite:
    return PageWrite(
        url=url,
        final_url=url,
        status=200,
        content_type=content_type,
        body=body,
        fetched_at=FETCHED_AT,
    )


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def manifest_lines(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / MANIFEST_NAME).read_bytes().splitlines()]


def assert_consistent(root: Path) -> None:
    """Every manifest record points to a complete file whose content has the recorded sha256."""
    for record in read_manifest(str(root / MANIFEST_NAME)).values():
        data = (root / record["path"]).read_bytes()
        if record["path"].endswith(".gz"):
            data = gzip.decompress(data)
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert len(data) == record["size"]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("url", NASTY_URLS)
def test_relpath_is_hash_only(url: str) -> None:
    relpath = page_relpath(url, "text/html")
    assert RELPATH.match(relpath)
    digest = relpath.split("/")[1].partition(".")[0]
    assert relpath.startswith(f"{digest[:2]}/")
    assert page_relpath(url, "text/html") == relpath  # stable


def test_relpath_suffixes() -> None:
    url = "http://example.com/"
    assert page_relpath(url, "text/html; charset=utf-8").endswith(".html")
    assert page_relpath(url, "Application/JSON").endswith(".json")
    assert page_relpath(url, "image/png").endswith(".bin")
    assert page_relpath(url).endswith(".bin")
    assert page_relpath(url, "text/html", gzipped=True).endswith(".html.gz")


def test_nasty_urls_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    for url in NASTY_URLS:
        write(store, url, url.encode("utf-8", "surrogatepass"))
    store.close()
    written = files_under(root)
    assert len(written) == len(NASTY_URLS)
    real_root = os.path.realpath(root)
    assert all(os.path.realpath(p).startswith(real_root + os.sep) for p in written)
    assert sorted(os.listdir(tmp_path)) == ["pages"]
    assert set(read_manifest(str(root / MANIFEST_NAME))) == set(NASTY_URLS)
    assert_consistent(root)


@pytest.mark.parametrize(
    "relpath",
    ["../escape", "ab/../../escape", "/etc/passwd", "", ".", "ab/cd/../../.."],
)
def test_resolve_under_rejects_escapes(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(ValueError, match="is not inside"):
        resolve_under(str(tmp_path), relpath)


def test_resolve_under_rejects_symlink_escape(tmp_path: Path) -> None:
    root, outside = tmp_path / "pages", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "ab").symlink_to(outside)
    with pytest.raises(ValueError, match="is not inside"):
        resolve_under(str(root), "ab/cd/file.html")
    assert resolve_under(str(root), "cd/ef/file.html") == str(root / "cd/ef/file.html")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic_write(str(target), b"first")
    atomic_write(str(target), b"second", durable=True)
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["file"]


def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    # Renaming a file over a non-empty directory fails, even for root.
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_bytes(b"kept")
    with pytest.raises(OSError):  # noqa: PT011 - IsADirectoryError or OSError, by platform
        atomic_write(str(target), b"data")
    assert sorted(os.listdir(tmp_path)) == ["target"]
    assert (target / "keep").read_bytes() == b"kept"


def test_write_failing_mid_file_keeps_previous_version(tmp_path: Path) -> None:
    # A file size limit makes write() fail part-way, like a full disk, and it binds root too.
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    write(store, "http://example.com/", b"version 1")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Without this, exceeding the limit kills the process instead of failing the write.
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(OSError, match="File too large"):
            write(store, "http://example.com/", b"v" * 128 * 1024)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    store.close()
    (only,) = files_under(root)
    assert only.read_bytes() == b"version 1"
    assert len(manifest_lines(root)) == 1
    assert_consistent(root)


def test_open_removes_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    (root / "ab" / "cd").mkdir(parents=True)
    stale = [root / f"{TEMP_PREFIX}x", root / "ab" / "cd" / f"{TEMP_PREFIX}y"]
    for path in stale:
        path.write_bytes(b"half a page")
    kept = root / "ab" / "cd" / "page.html"
    kept.write_bytes(b"page")
    PageStore(str(root)).open()
    assert not any(path.exists() for path in stale)
    assert kept.read_bytes() == b"page"


def test_open_fails_when_directory_cannot_exist(tmp_path: Path) -> None:
    # A regular file as parent stops root too, unlike chmod.
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        PageStore(str(tmp_path / "file" / "pages")).open()


# --------------------------------------------------------------------------- manifest


def test_torn_manifest_line_is_repaired_on_open(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    write(store, "http://a/", b"a")
    write(store, "http://b/", b"b")
    store.manifest.close()  # a crash: no compaction
    with open(root / MANIFEST_NAME, "ab") as manifest:
        manifest.write(b'{"url": "http://torn/", "pa')

    store = PageStore(str(root))
    store.open()
    write(store, "http://c/", b"c")
    lines = manifest_lines(root)  # every line parses: the torn one is gone, not glued to c
    assert [line["url"] for line in lines] == ["http://a/", "http://b/", "http://c/"]
    store.close()
    assert set(read_manifest(str(root / MANIFEST_NAME))) == {"http://a/", "http://b/", "http://c/"}
    assert_consistent(root)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", b""),
        (b"no newline at all", b""),
        (b"one\n", b"one\n"),
        (b"one\ntwo\nthr", b"one\ntwo\n"),
        (b"x" * 200_000 + b"\n" + b"y" * 150_000, b"x" * 200_000 + b"\n"),
    ],
)
def test_repair_torn_tail(tmp_path: Path, content: bytes, expected: bytes) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    repair_torn_tail(str(path))
    assert path.read_bytes() == expected


def test_repair_torn_tail_of_missing_file(tmp_path: Path) -> None:
    repair_torn_tail(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_read_manifest_last_line_wins_and_skips_junk(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(
        b'{"url": "http://a/", "path": "1", "sha256": "old"}\n'
        b"not json\n"
        b'["not", "a", "record"]\n'
        b'{"no_url": true}\n'
        b'{"url": "http://a/", "path": "2", "sha256": "new"}\n'
        b'{"url": "http://b/", "pa'
    )
    records = read_manifest(str(path))
    assert list(records) == ["http://a/"]
    assert records["http://a/"]["sha256"] == "new"
    assert read_manifest(str(tmp_path / "missing")) == {}


def test_close_compacts_to_one_line_per_url(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    for version in range(3):
        for n in range(5):
            write(store, f"http://example.com/{n}", f"page {n} version {version}".encode())
    assert len(manifest_lines(root)) == 15
    store.close()
    lines = manifest_lines(root)
    assert len(lines) == 5
    assert {line["url"] for line in lines} == {f"http://example.com/{n}" for n in range(5)}
    for line in lines:
        body = f"page {str(line['url']).rsplit('/', 1)[1]} version 2".encode()
        assert line["sha256"] == hashlib.sha256(body).hexdigest()
    assert len(files_under(root)) == 5
    assert_consistent(root)


def test_compacting_a_long_manifest_takes_little_memory(tmp_path: Path) -> None:
    # 100,000 records of a long crawl, three of whose URLs were written again later:
    # finding them and rewriting the file must not hold every record (that took 2.3 GB
    # at the end of a 1,000,000-page crawl).
    path = tmp_path / MANIFEST_NAME
    record = {"final_url": "", "status": 200, "content_type": "text/html", "path": "x"}
    with path.open("w", encoding="ascii") as file:
        for n in [*range(100_000), 7, 70, 700]:
            line = {"url": f"http://example.com/{n}", **record, "path": f"p{n}"}
            file.write(json.dumps(line, separators=(",", ":")) + "\n")
    manifest = Manifest(str(path))
    tracemalloc.start()
    try:
        dropped = manifest.compact()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    assert dropped == set()  # each URL's file name is the same in both records
    lines = manifest_lines(tmp_path)
    assert len(lines) == 100_000
    assert [line["url"] for line in lines[-3:]] == [f"http://example.com/{n}" for n in (7, 70, 700)]
    # Nothing repeated: the file is left as it is.
    before = path.stat()
    assert manifest.compact() == set()
    assert path.stat().st_ino == before.st_ino


def test_manifest_record_fields(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    body = b"<html>hi</html>"
    assert write(store, "http://example.com/", body, "text/html; charset=utf-8") == len(body)
    store.close()
    assert manifest_lines(root) == [
        {
            "url": "http://example.com/",
            "final_url": "http://example.com/",
            "status": 200,
            "content_type": "text/html; charset=utf-8",
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "path": page_relpath("http://example.com/", "text/html"),
            "fetched_at": FETCHED_AT,
        }
    ]


def test_manifest_append_needs_open(tmp_path: Path) -> None:
    store = PageStore(str(tmp_path))
    with pytest.raises(RuntimeError, match="not open"):
        write(store, "http://example.com/", b"x")


# --------------------------------------------------------------------------- re-runs, gzip, threads


def test_rerun_overwrites_each_page_in_place(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    urls = [f"http://example.com/{n}" for n in range(20)]
    for run in range(2):
        store = PageStore(str(root))
        store.open()
        for url in urls:
            write(store, url, f"{url} run {run}".encode())
        store.close()
    assert len(files_under(root)) == len(urls)
    lines = manifest_lines(root)
    assert sorted(str(line["url"]) for line in lines) == sorted(urls)
    for line in lines:
        assert line["sha256"] == hashlib.sha256(f"{line['url']} run 1".encode()).hexdigest()
    assert_consistent(root)


def test_gzip_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    body = b"<html>" + b"compressible " * 1000 + b"</html>"
    store = PageStore(str(root), gzipped=True)
    store.open()
    written = write(store, "http://example.com/", body)
    store.close()
    (record,) = read_manifest(str(root / MANIFEST_NAME)).values()
    assert record["path"].endswith(".html.gz")
    stored = (root / record["path"]).read_bytes()
    assert written == len(stored) < len(body)
    assert gzip.decompress(stored) == body
    assert record["size"] == len(body)
    assert record["sha256"] == hashlib.sha256(body).hexdigest()


def test_switching_gzip_or_type_leaves_one_file_per_url(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    runs = [(False, "text/html"), (True, "text/html"), (True, "application/json")]
    for gzipped, content_type in runs:
        store = PageStore(str(root), gzipped=gzipped)
        store.open()
        write(store, "http://example.com/", content_type.encode(), content_type)
        store.close()
    (only,) = files_under(root)
    assert only.name.endswith(".json.gz")
    assert gzip.decompress(only.read_bytes()) == b"application/json"
    assert_consistent(root)


def test_concurrent_writes_of_same_urls_stay_consistent(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    store = PageStore(str(root))
    store.open()
    # As the pipeline does: several threads at once, each URL always on the same one, in
    # batches whose files are all written before their manifest lines.
    lanes: list[list[PageWrite]] = [[] for _ in range(4)]
    for n in range(400):
        lanes[n % 10 % 4].append(page(f"http://example.com/{n % 10}", f"body {n}".encode()))

    def write_lane(lane: list[PageWrite]) -> None:
        for start in range(0, len(lane), 7):
            store.write_batch(lane[start : start + 7])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write_lane, lanes))
    # Before compaction: the last line of each URL describes the file on disk.
    assert_consistent(root)
    store.close()
    assert len(manifest_lines(root)) == 10
    assert len(files_under(root)) == 10
    assert_consistent(root)
