"""Run a real scrapyd 1.6 for tests: isolated, on a free loopback port, always stopped.

Everything scrapyd writes (eggs, logs, items, its sqlite queues, twistd.pid) lands under one
temporary folder, and its config is generated there, so a test never touches, nor is touched by,
a scrapyd set up on the machine. Usage::

    with Scrapyd(tmp_path / "scrapyd") as scrapyd:
        scrapyd.deploy(EXAMPLE_PROJECT, project="pages")
        job = scrapyd.schedule("pages", "pages", args={...}, settings={...})
        scrapyd.wait_for_job("pages", job, timeout=30)

Two traits of scrapyd's API shape the code below: errors come back as HTTP 200 with
``{"status": "error"}`` (so every answer's ``status`` is checked), and scrapyd does not stop the
crawls it started when it stops itself (so `stop` ends them, one PID at a time).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.processes import ManagedProcess

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Never inherited: scrapyd's runner uses the egg's settings module only when
# SCRAPY_SETTINGS_MODULE is unset, and SCRAPY_PROJECT picks a [settings] entry of scrapy.cfg.
_SCRAPY_ENV = ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT")


class ScrapydError(RuntimeError):
    """scrapyd answered with ``"status": "error"``, or did not behave."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Scrapyd(ManagedProcess):
    """One scrapyd process whose every directory is under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        pythonpath: Iterable[Path] = (),
        poll_interval: float = 0.2,
    ) -> None:
        self.root = root
        self.python = python
        self.pythonpath = [str(path) for path in pythonpath]
        self.poll_interval = poll_interval
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: Any = None
        # requests would route 127.0.0.1 through an HTTP(S)_PROXY of the environment.
        self.http = requests.Session()
        self.http.trust_env = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def items_dir(self) -> Path:
        return self.root / "items"

    def start(self, attempts: int = 3) -> None:
        """Start scrapyd and wait until it answers; a port taken meanwhile means another try."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            self._write_config()
            self._spawn()
            try:
                self._wait_until_up()
            except ScrapydError:
                self.stop()
                if attempt == attempts:
                    raise
            else:
                return

    def _write_config(self) -> None:
        # scrapyd reads ./scrapyd.conf, then ~/.scrapyd.conf and the closest scrapy.cfg, which
        # would override it: HOME is pointed at root (see _spawn) and root has no scrapy.cfg.
        config = f"""\
[scrapyd]
bind_address = 127.0.0.1
http_port = {self.port}
poll_interval = {self.poll_interval}
eggs_dir = {self.root / "eggs"}
logs_dir = {self.logs_dir}
items_dir = {self.items_dir}
dbs_dir = {self.root / "dbs"}
jobs_to_keep = 5
finished_to_keep = 100
max_proc = 4
"""
        (self.root / "scrapyd.conf").write_text(config, encoding="utf-8")

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRAPY_ENV}
        env["HOME"] = str(self.root)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, env.get("PYTHONPATH", "")])
        return env

    def _spawn(self) -> None:
        self._output = open(self.root / "scrapyd.out", "ab")  # noqa: SIM115 closed in stop()
        # Its own cwd: scrapyd reads scrapyd.conf from there, writes twistd.pid there, and the
        # crawls it launches run there too (so relative paths in their settings land there).
        self.proc = subprocess.Popen(
            [self.python, "-m", "scrapyd"],
            cwd=self.root,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ScrapydError(f"scrapyd exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(requests.RequestException):
                self.get("daemonstatus.json")
                return
            time.sleep(0.1)
        raise ScrapydError(f"scrapyd did not answer in {START_TIMEOUT} s:\n{self.output()}")

    def stop(self) -> None:
        """Stop scrapyd and any crawl it still runs: terminate, then kill, each by its PID."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                crawls = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                crawls = []
            _end(proc.pid)
            for child in crawls:
                _end(child.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        if self._output is not None:
            self._output.close()
            self._output = None
        self.http.close()

    def output(self, last: int = 4000) -> str:
        """The tail of scrapyd's own console output, for failure messages."""
        path = self.root / "scrapyd.out"
        return path.read_text(errors="replace")[-last:] if path.exists() else ""

    # -- API ---------------------------------------------------------------------

    def get(self, endpoint: str, **params: str) -> dict[str, Any]:
        return self._checked(self.http.get(self.base_url + endpoint, params=params, timeout=10))

    def post(
        self,
        endpoint: str,
        data: Iterable[tuple[str, str]] | Mapping[str, str],
        files: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        # Spider list requests (run at deploy and schedule) start a Python process: be patient.
        response = self.http.post(self.base_url + endpoint, data=data, files=files, timeout=60)
        return self._checked(response)

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        if answer.get("status") != "ok":
            raise ScrapydError(f"{response.url}: {answer.get('message', answer)}")
        return answer

    def deploy(self, project_dir: Path, project: str, version: str = "1") -> dict[str, Any]:
        """Build the project's egg with scrapyd-client, upload it, and check it lists spiders."""
        egg = self.build_egg(project_dir)
        with egg.open("rb") as file:
            answer = self.post(
                "addversion.json",
                {"project": project, "version": version},
                files={"egg": (egg.name, file)},
            )
        if not answer.get("spiders"):
            raise ScrapydError(f"the egg of {project_dir} has no spiders: {answer}")
        return answer

    def build_egg(self, project_dir: Path) -> Path:
        """``scrapyd-deploy --build-egg`` on a copy of `project_dir`.

        A copy, because building writes build/ and *.egg-info/ next to setup.py; and TMPDIR set,
        because --build-egg never removes the temporary folder it builds in.
        """
        build = self.root / "build"
        source = build / "project"
        shutil.rmtree(build, ignore_errors=True)
        shutil.copytree(
            project_dir,
            source,
            ignore=shutil.ignore_patterns(
                "output", "build", "*.egg-info", "__pycache__", ".scrapy"
            ),
        )
        egg = build / "project.egg"
        tmp = build / "tmp"
        tmp.mkdir()
        env = {**self._environment(), "TMPDIR": str(tmp)}
        result = subprocess.run(
            [self.python, "-m", "scrapyd_client.deploy", f"--build-egg={egg}"],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0 or not zipfile.is_zipfile(egg):
            raise ScrapydError(f"building the egg failed:\n{result.stdout}\n{result.stderr}")
        return egg

    def schedule(
        self,
        project: str,
        spider: str,
        *,
        args: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> str:
        """Schedule a crawl; `args` become spider arguments, `settings` ``-s`` overrides."""
        data = [("project", project), ("spider", spider)]
        data += [("setting", f"{name}={value}") for name, value in (settings or {}).items()]
        data += list((args or {}).items())
        return str(self.post("schedule.json", data)["jobid"])

    def cancel(self, project: str, job: str) -> str | None:
        """Cancel a job (SIGINT to a running crawl); return its state before: pending/running."""
        prevstate: str | None = self.post("cancel.json", {"project": project, "job": job})[
            "prevstate"
        ]
        return prevstate

    def job_state(self, project: str, job: str) -> str | None:
        """``pending``, ``running``, ``finished``, or None if scrapyd does not know the job."""
        jobs = self.get("listjobs.json", project=project)
        for state in ("pending", "running", "finished"):
            if any(entry["id"] == job for entry in jobs[state]):
                return state
        return None

    def wait_for_job(self, project: str, job: str, timeout: float) -> float:
        """Wait until the job is finished; return how long that took."""
        start = time.monotonic()
        while (state := self.job_state(project, job)) != "finished":
            if time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"job {job} still {state} after {timeout} s; its log ends:\n"
                    + self.job_log(project, job)[-4000:]
                )
            time.sleep(self.poll_interval)
        return time.monotonic() - start

    def job_log(self, project: str, job: str) -> str:
        """The job's Scrapy log (scrapyd writes it to logs_dir/project/spider/job.log)."""
        for path in self.logs_dir.glob(f"{project}/*/{job}.log"):
            return path.read_text(errors="replace")
        return ""

    def job_items(self, project: str, job: str) -> list[str]:
        """The lines of the job's item feed (items_dir/project/spider/job.jl)."""
        for path in self.items_dir.glob(f"{project}/*/{job}.jl"):
            return path.read_text(encoding="utf-8").splitlines()
        return []


def _end(pid: int) -> None:
    """Terminate the process `pid`, and kill it if it has not exited in STOP_TIMEOUT."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


# -- checking what a crawl left behind (scrapyd job or plain `scrapy crawl`) ----------------

_LOG_LEVEL = re.compile(r"^\S+ \S+ \[(?P<logger>[^\]]+)\] (?P<level>[A-Z]+): (?P<message>.*)$")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file, parsed; a line that does not parse fails the test."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def log_errors(log: str, expected: Iterable[str] = ()) -> list[str]:
    """The ERROR and CRITICAL lines of a Scrapy log, less those matching an `expected` regex."""
    patterns = [re.compile(pattern) for pattern in expected]
    found = []
    for line in log.splitlines():
        match = _LOG_LEVEL.match(line)
        if match is None or match["level"] not in ("ERROR", "CRITICAL"):
            continue
        if not any(pattern.search(line) for pattern in patterns):
            found.append(line)
    return found


def stat(log: str, name: str) -> Any:
    """A value of the stats dump at the end of a Scrapy log (pprint: one key per line)."""
    match = re.search(rf"^[{{ ]'{re.escape(name)}': (?P<value>.*?)[,}}]?$", log, re.MULTILINE)
    if match is None:
        return None
    try:
        return ast.literal_eval(match["value"])
    except (ValueError, SyntaxError):
        return match["value"]  # e.g. a datetime(...): the text is all a test can use


def assert_pages_intact(pages_dir: Path) -> list[dict[str, Any]]:
    """Check that every manifest line parses and names a file of the recorded size and hash."""
    records = read_jsonl(pages_dir / "manifest.jsonl")
    for record in records:
        body = (pages_dir / record["path"]).read_bytes()
        assert len(body) == record["size"], record
        assert hashlib.sha256(body).hexdigest() == record["sha256"], record
    return records
