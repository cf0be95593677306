"""The example project under a real scrapyd 1.6: deploy, schedule, finish, cancel.

scrapyd runs the crawls with its own Python (here: the one running the tests), so what these
tests prove is that the plugin, installed next to scrapyd, works for an egg-deployed project.
Everything is on 127.0.0.x: scrapyd, and the mock server (conftest's `mockserver`) the crawls
fetch from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mockserver import MockServer
from tests.scrapyd_harness import (
    Scrapyd,
    assert_pages_intact,
    log_errors,
    read_jsonl,
    stat,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = REPO_ROOT / "example_project"
PROJECT = "pages"
SPIDER = "pages"


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapyd]:
    # The repository on PYTHONPATH: the crawls then run this working tree's plugin even where
    # it is not pip-installed (where it is, this is the same code).
    with Scrapyd(tmp_path_factory.mktemp("scrapyd"), pythonpath=[REPO_ROOT]) as server:
        server.deploy(EXAMPLE_PROJECT, project=PROJECT)
        yield server


def test_deployed_project_lists_the_spider(scrapyd: Scrapyd) -> None:
    assert scrapyd.get("listspiders.json", project=PROJECT)["spiders"] == [SPIDER]


def test_scheduled_crawl_writes_pages_and_ledger(
    scrapyd: Scrapyd, mockserver: MockServer, tmp_path: Path
) -> None:
    pages = [mockserver.url(f"/page/{i}", host=host) for i in range(10) for host in (1, 2)]
    missing = [mockserver.url("/status/404", host=host) for host in (1, 2)]
    url_file = tmp_path / "urls.txt"
    url_file.write_text(
        "# ten pages on two hosts, and a 404 on each\n" + "\n".join(pages + missing)
    )
    pages_dir = tmp_path / "pages"

    started = time.monotonic()
    # Absolute paths: the crawl runs in scrapyd's directory, not in this test's.
    job = scrapyd.schedule(
        PROJECT,
        SPIDER,
        args={"urls": str(url_file)},
        settings={"ASYNCFETCH_PAGES_DIR": str(pages_dir)},
    )
    scrapyd.wait_for_job(PROJECT, job, timeout=45)
    assert time.monotonic() - started < 50

    log = scrapyd.job_log(PROJECT, job)
    assert stat(log, "finish_reason") == "finished", log[-3000:]
    written = assert_pages_intact(pages_dir)
    assert sorted(record["url"] for record in written) == sorted(pages)
    failures = read_jsonl(pages_dir / "failures.jsonl")
    assert sorted((f["url"], f["reason"], f["status"]) for f in failures) == sorted(
        (url, "HttpError", 404) for url in missing
    )
    # scrapyd's items_dir makes it add a JSON Lines feed: the Page items export to it too.
    assert len(scrapyd.job_items(PROJECT, job)) == len(pages)
    # A 404 is not retried and is logged at INFO ("Ignoring response <404 ...>"), so this
    # crawl has no expected ERROR line at all: any is a bug.
    assert log_errors(log) == []
    assert "ScrapyDeprecationWarning" not in log


def test_cancelled_crawl_stops_quickly_and_leaves_intact_pages(
    scrapyd: Scrapyd, mockserver: MockServer, tmp_path: Path
) -> None:
    # 400 one-second pages on four hosts: about 25 s at the example's caps (16 in flight), so
    # the job is surely still running when it is cancelled.
    slow = [mockserver.url(f"/delay/1?n={n}", host=1 + n % 4) for n in range(400)]
    url_file = tmp_path / "slow.txt"
    url_file.write_text("\n".join(slow))
    pages_dir = tmp_path / "pages"
    manifest = pages_dir / "manifest.jsonl"
    job = scrapyd.schedule(
        PROJECT,
        SPIDER,
        args={"urls": str(url_file)},
        settings={"ASYNCFETCH_PAGES_DIR": str(pages_dir)},
    )

    deadline = time.monotonic() + 30
    while _complete_lines(manifest) < 10:
        assert time.monotonic() < deadline, scrapyd.job_log(PROJECT, job)[-3000:]
        assert scrapyd.job_state(PROJECT, job) != "finished", scrapyd.job_log(PROJECT, job)
        time.sleep(0.2)

    assert scrapyd.cancel(PROJECT, job) == "running"
    # Scrapy's graceful shutdown waits for requests in flight; the plugin bounds that wait
    # (ASYNCFETCH_SHUTDOWN_TIMEOUT, 2 s) and the pages are one-second ones anyway.
    assert scrapyd.wait_for_job(PROJECT, job, timeout=10) < 8

    log = scrapyd.job_log(PROJECT, job)
    assert stat(log, "finish_reason") == "shutdown", log[-3000:]
    written = assert_pages_intact(pages_dir)
    assert 10 <= len(written) < len(slow)
    assert {record["url"] for record in written} <= set(slow)
    assert not list(pages_dir.rglob(".asyncfetch-tmp-*")), "a half-written page was left"
    # The ledger accounts for what the cancel cut short; every line of it parses.
    failures = read_jsonl(pages_dir / "failures.jsonl")
    assert failures
    assert {f["url"] for f in failures} <= set(slow)
    # A cancel is no error: requests it cut short are logged at INFO and in the ledger.
    assert log_errors(log) == []


def _complete_lines(path: Path) -> int:
    """Lines of a file being appended to, not counting a last one still without its newline."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
