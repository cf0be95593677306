"""``scrapy crawl pages`` in example_project/, run the way the README tells a newcomer to run it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from tests.mockserver import MockServer
from tests.scrapyd_harness import assert_pages_intact, log_errors, read_jsonl, stat

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = REPO_ROOT / "example_project"
DEMO_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")

# What the demo site is built to produce, each an expected ERROR line of the default run:
# its 500 pages are retried, then given up on; its connection resets are retried, then
# reported as download errors.
DEMO_EXPECTED_ERRORS = (
    r"\[scrapy\.downloadermiddlewares\.retry\] ERROR: Gave up retrying <GET http://127\.0\.0\.\d:\d+/(broken|reset)/\d+>",
    r"\[scrapy\.core\.scraper\] ERROR: Error downloading <GET http://127\.0\.0\.\d:\d+/reset/\d+>",
)


def crawl_command(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """``scrapy crawl pages`` with output under `tmp_path`, and the environment to run it in."""
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    # This working tree's plugin, whether or not it is pip-installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "scrapy", "crawl", "pages"]
    command += ["-s", f"ASYNCFETCH_PAGES_DIR={tmp_path / 'pages'}", *args]
    return command, env


def crawl(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[str, float]:
    """Run ``scrapy crawl pages`` from example_project/ with output under `tmp_path`."""
    command, env = crawl_command(tmp_path, *args)
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=EXAMPLE_PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - started
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "ScrapyDeprecationWarning" not in log
    return log, elapsed


def test_default_run_crawls_the_demo_site(tmp_path: Path) -> None:
    log, elapsed = crawl(tmp_path)

    assert elapsed < 60
    assert stat(log, "finish_reason") == "finished", log[-3000:]
    pages_dir = tmp_path / "pages"
    written = assert_pages_intact(pages_dir)
    assert len(written) >= 200
    assert {record["url"].split("/")[2].split(":")[0] for record in written} == set(DEMO_HOSTS)
    reasons = {failure["reason"] for failure in read_jsonl(pages_dir / "failures.jsonl")}
    # 404, 500 after retries, a reset connection after retries, robots.txt's refusal.
    assert {"HttpError", "DownloadFailedError", "IgnoreRequest"} <= reasons
    assert stat(log, "retry/max_reached") > 0
    assert log_errors(log, DEMO_EXPECTED_ERRORS) == []
    assert "Unclosed" not in log
    # It tells where the output went, and the ledger has the last word.
    assert f"pages under {pages_dir}" in log
    assert "Ledger:" in log


def test_url_file_skips_and_records_invalid_lines(tmp_path: Path) -> None:
    invalid = [
        "ftp://example.invalid/file",
        "not a url",
        "http://",
        "http://[::1/unclosed",
        "https://127.0.0.1:99999/port-out-of-range",
    ]
    url_file = tmp_path / "urls.txt"
    # The same invalid line twice is still one warning and one record.
    lines = ["# a comment", "", *invalid, invalid[0], "   # an indented comment"]
    url_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    log, _ = crawl(tmp_path, "-a", f"urls={url_file}")

    assert stat(log, "finish_reason") == "finished", log[-3000:]
    failures = read_jsonl(tmp_path / "pages" / "failures.jsonl")
    assert sorted(f["url"] for f in failures) == sorted(invalid)
    assert {f["reason"] for f in failures} == {"InvalidURL"}
    warnings = [line for line in log.splitlines() if "WARNING: Skipping invalid URL" in line]
    assert len(warnings) == len(invalid)
    assert "Traceback" not in log
    assert log_errors(log) == []


@pytest.mark.parametrize(
    ("name", "content"),
    [("missing.txt", None), ("binary.txt", b"\xff\xfe\x00 not UTF-8\n")],
    ids=["missing", "not-utf8"],
)
def test_unreadable_url_file_closes_the_crawl_cleanly(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    url_file = tmp_path / name
    if content is not None:
        url_file.write_bytes(content)

    log, _ = crawl(tmp_path, "-a", f"urls={url_file}")

    assert stat(log, "finish_reason") == "urls_file_unreadable", log[-3000:]
    errors = log_errors(log)
    assert len(errors) == 1, errors
    assert f"Cannot read the URL file {url_file}" in errors[0]
    assert "Traceback" not in log


#: URLs in the long-list test's file, and how its memory is judged: after start-up, the
#: crawl's RSS stays under the bound and grows by at most the allowance. Read whole, the
#: file's requests alone would take about 240 MB (1.2 KB each).
LONG_LIST_URLS = 200_000
LONG_LIST_RSS_BOUND_MB = 150
LONG_LIST_GROWTH_MB = 15


def test_a_long_url_file_is_read_as_the_crawl_goes(mockserver: MockServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    with urls.open("w") as file:
        for n in range(LONG_LIST_URLS):
            file.write(mockserver.url(f"/delay/1?n={n}", host=n % mockserver.hosts + 1) + "\n")
    command, env = crawl_command(
        tmp_path, "-a", f"urls={urls}", "-s", "ROBOTSTXT_OBEY=False", "-s", "LOG_LEVEL=INFO"
    )
    proc = subprocess.Popen(
        command,
        cwd=EXAMPLE_PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[float] = []
    try:
        process = psutil.Process(proc.pid)
        # Past start-up (imports, the first requests), then a while of crawling.
        time.sleep(5)
        for _ in range(20):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            samples.append(process.memory_info().rss / 2**20)
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, log = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert max(samples) < LONG_LIST_RSS_BOUND_MB, samples
    assert max(samples) - samples[0] < LONG_LIST_GROWTH_MB, samples
    assert "Spider closed (shutdown)" in log
    # Pages were written all along: start() was read as the crawl went, not first.
    assert read_jsonl(tmp_path / "pages" / "manifest.jsonl")


def _load_url_rules() -> ModuleType:
    """pages_project.urls, loaded from its file: the project is not a package of this repo."""
    spec = importlib.util.spec_from_file_location(
        "pages_project_urls", EXAMPLE_PROJECT / "pages_project" / "urls.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


url_rules = _load_url_rules()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://127.0.0.1:8080/a?b=c", None),
        ("HTTPS://Example.com/", None),
        ("ftp://example.com/", "scheme 'ftp' is not http or https"),
        ("example.com/page", "scheme 'none' is not http or https"),
        ("http:///path-only", "URL has no host"),
        ("http://[::1/x", "unparsable URL"),
        ("http://127.0.0.1:http/", "unparsable URL"),
        ("http://exa mple.com/", "URL contains whitespace"),
    ],
)
def test_url_problem(text: str, problem: str | None) -> None:
    found = url_rules.url_problem(text)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_url_file_lines_skip_blanks_and_comments(tmp_path: Path) -> None:
    url_file = tmp_path / "urls.txt"
    url_file.write_text("# c\n\n  http://a.test/  \n\t# c\nnope\n", encoding="utf-8")
    lines = list(url_rules.iter_url_file(url_file))
    assert [(line.line_number, line.text) for line in lines] == [(3, "http://a.test/"), (5, "nope")]
    assert lines[0].problem is None
    assert lines[1].problem is not None


def test_same_host_compares_host_and_effective_port() -> None:
    assert url_rules.same_host("http://a.test/x", "http://A.test:80/y")
    assert not url_rules.same_host("http://a.test/x", "https://a.test/x")
    assert not url_rules.same_host("http://127.0.0.1:1/", "http://127.0.0.2:1/")
    assert not url_rules.same_host("http://a.test:8080/", "http://a.test/")
