"""Issue 6, "nothing lost, nothing hangs, nothing leaks": the soak.

20,000 URLs over 50 hosts, a fifth of them faulty (HTTP errors, resets,
truncated bodies, a few timeouts), crawled in a process of its own with the
page pipeline and the ledger: the crawl finishes, every URL is accounted for
exactly once with the outcome its fault calls for, the log holds no leak or
unhandled error, and memory stays flat from the 5,000th response on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faultcrawl import assert_accounted_once
from tests.mockserver import MockServer

pytestmark = pytest.mark.timeout(240)

HOSTS = 50
URLS = 20_000
REPO = Path(__file__).resolve().parent.parent
#: Per 1,000 URLs: kind -> count. 200 of 1,000 are faulty.
MIX = {
    "ok": 800,
    "404": 60,
    "500": 40,
    "503": 40,
    "reset-mid-body": 20,
    "truncated": 30,
    "reset-before-headers": 8,
    "timeout": 2,
}
#: kind -> (ledger reason, status, attempts) for the faulty kinds (RETRY_TIMES = 1).
EXPECTED: dict[str, tuple[str, int | None, int]] = {
    "404": ("HttpError", 404, 1),
    "500": ("HttpError", 500, 2),
    "503": ("HttpError", 503, 2),
    "reset-mid-body": ("ResponseDataLossError", None, 2),
    "truncated": ("ResponseDataLossError", None, 2),
    "reset-before-headers": ("DownloadFailedError", None, 2),
    "timeout": ("DownloadTimeoutError", None, 2),
}
#: Lines that mean something leaked or failed unseen.
BAD_LOG = re.compile(
    r"Unclosed|Unhandled error|Traceback|Task was destroyed|never retrieved|"
    r"Exception ignored|ResourceWarning|Unexpected error"
)


@pytest.fixture(scope="module")
def soak_server() -> Iterator[MockServer]:
    with MockServer(hosts=HOSTS) as server:
        yield server


def soak_urls(server: MockServer) -> dict[str, str]:
    """URL -> kind, shuffled so that faults are spread over the crawl and hosts."""
    kinds = [kind for kind, count in MIX.items() for _ in range(count * URLS // 1000)]
    rng = random.Random(6)
    rng.shuffle(kinds)
    port = server.http_port
    urls = {}
    for n, kind in enumerate(kinds):
        host = f"h{n % HOSTS + 1}.test"
        path = {
            "ok": f"/page/{n % 50}",
            "404": "/status/404",
            "500": "/status/500",
            "503": "/status/503",
            "reset-mid-body": "/reset-mid-body",
            "truncated": "/truncated",
            "timeout": "/delay/5",
        }.get(kind)
        if path is None:  # only the fault port resets before headers, on 127.0.0.1
            urls[f"http://h1.test:{server.fault_port}/reset-before-headers?n={n}"] = kind
        else:
            urls[f"http://{host}:{port}{path}?n={n}"] = kind
    assert len(urls) == URLS
    return urls


def soak_settings(pages_dir: Path, log_file: Path) -> dict[str, Any]:
    return {
        "ADDONS": {"scrapy_asyncfetch.Addon": 300},
        "ASYNCFETCH_RESOLVER": "tests.resolver.LoopbackResolver",
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "CONCURRENT_REQUESTS": 200,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
        "RETRY_ENABLED": True,
        "RETRY_TIMES": 1,
        "DOWNLOAD_TIMEOUT": 1.0,
        # 503s pause their domain: briefly, or the soak would mostly wait.
        "ASYNCFETCH_BACKOFF_DEFAULT": 0.05,
        "ASYNCFETCH_BACKOFF_MAX": 0.2,
        # Scrapy lets responses queue behind the item pipeline up to 5 MB,
        # counting each at least 1 KiB: ~5,000 of these small pages, whose
        # objects weigh far more, whenever the disk stalls. That bounded backlog
        # (and the memory Python keeps after it) would swamp a leak: keep it small.
        "SCRAPER_SLOT_MAX_ACTIVE_SIZE": 200_000,
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        "LOG_FILE": str(log_file),
        "LOGSTATS_INTERVAL": 10.0,
    }


def test_soak(soak_server: MockServer, tmp_path: Path) -> None:
    urls = soak_urls(soak_server)
    url_file = tmp_path / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n")
    pages_dir, log_file = tmp_path / "pages", tmp_path / "crawl.log"
    settings = soak_settings(pages_dir, log_file)
    command = [sys.executable, "-m", "tests.faultcrawl", "--urls", str(url_file)]
    command += ["--settings", json.dumps(settings), "--rss-every", "1000", "--lazy"]
    proc = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=200
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    stats = result["stats"]

    # It finished, by itself, in time.
    assert stats["finish_reason"] == "finished"
    assert result["elapsed"] < 180
    # Nothing lost: every URL once, in the manifest or in the failures.
    outcomes = assert_accounted_once(pages_dir, urls)
    assert stats["asyncfetch/ledger/requests"] == URLS
    assert stats["asyncfetch/ledger/unaccounted"] == 0
    by_kind = Counter(urls.values())
    assert set(outcomes.pages) == {url for url, kind in urls.items() if kind == "ok"}
    assert stats["asyncfetch/ledger/pages"] == by_kind["ok"]
    # ...each with the outcome its fault calls for.
    wrong = []
    for record in outcomes.failures:
        kind = urls[record["url"]]
        got = (record["reason"], record["status"], record["attempts"])
        if got != EXPECTED[kind]:
            wrong.append((kind, got, record["message"]))
    assert not wrong, (len(wrong), wrong[:10])
    # The pages on disk are what the manifest says.
    for record in outcomes.pages.values():
        assert (pages_dir / record["path"]).stat().st_size == record["size"]
    for record in random.Random(1).sample(sorted(outcomes.pages.values(), key=str), 300):
        body = (pages_dir / record["path"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == record["sha256"]

    # Nothing leaked or failed unseen.
    log = log_file.read_text(errors="replace")
    assert "Ledger: " in log  # the log file did get the crawl's log
    bad = [line for line in log.splitlines() if BAD_LOG.search(line)]
    assert not bad, bad[:10]
    bad = [line for line in proc.stderr.splitlines() if BAD_LOG.search(line)]
    assert not bad, bad[:10]
    # Memory stays flat: from 5,000 responses to the last, within 20% of what it was then.
    rss = {seen: value for seen, value in result["rss"]}  # responses so far -> RSS
    in_mib = {seen: value >> 20 for seen, value in rss.items()}
    assert max(rss) == stats["response_received_count"] > 18_000, in_mib
    assert max(rss.values()) <= rss[5000] * 1.2, in_mib
