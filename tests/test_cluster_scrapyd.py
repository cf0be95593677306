"""Two nodes: two real scrapyd 1.6 instances on loopback, each running the same cluster
crawl of example_project's ``pages`` spider, with one real redis-server between them."""

from __future__ import annotations

import json
from pathlib import Path

from scrapy_asyncfetch._cluster.keys import Keys
from tests.mockserver import MockServer
from tests.redis_harness import RedisServer
from tests.scrapyd_harness import Scrapyd, assert_pages_intact, log_errors, stat

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = REPO_ROOT / "example_project"


def test_two_scrapyd_nodes_run_one_crawl(mockserver: MockServer, tmp_path: Path) -> None:
    pages = [mockserver.url(f"/page/{i}", host=host) for i in range(30) for host in (1, 2, 3)]
    url_file = tmp_path / "urls.txt"
    url_file.write_text("\n".join(pages) + "\n")
    with (
        RedisServer(tmp_path / "redis") as redis_server,
        Scrapyd(tmp_path / "node1", pythonpath=[REPO_ROOT]) as node1,
        Scrapyd(tmp_path / "node2", pythonpath=[REPO_ROOT]) as node2,
    ):
        jobs = []
        for n, node in enumerate((node1, node2), 1):
            node.deploy(EXAMPLE_PROJECT, project="pages")
            # The same job on both nodes, as an operator would schedule it everywhere.
            settings = {
                "ASYNCFETCH_REDIS_URL": redis_server.url,
                "ASYNCFETCH_CLUSTER": "nodes",
                "ASYNCFETCH_PAGES_DIR": str(tmp_path / f"pages{n}"),
            }
            jobs.append(
                node.schedule("pages", "pages", args={"urls": str(url_file)}, settings=settings)
            )
        for node, job in zip((node1, node2), jobs, strict=True):
            node.wait_for_job("pages", job, timeout=90)
            log = node.job_log("pages", job)
            assert stat(log, "finish_reason") == "finished", log[-3000:]
            assert log_errors(log) == [], log[-3000:]
        with redis_server.client() as client:
            outcomes = [json.loads(v) for v in client.hvals(Keys("nodes").outcomes)]
    assert sorted(o["url"] for o in outcomes) == sorted(pages)
    written = assert_pages_intact(tmp_path / "pages1") + assert_pages_intact(tmp_path / "pages2")
    assert sorted(r["url"] for r in written) == sorted(pages)
