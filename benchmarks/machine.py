"""Describe the machine and software a benchmark ran on, for results.json."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("scrapy", "aiohttp", "twisted", "requests", "psutil", "scrapy-asyncfetch")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        pass
    # The plugin is usually run from a checkout, not installed: ask the module itself.
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        return None
    return getattr(module, "__version__", "checkout")


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def machine_info(repo: Path) -> dict[str, Any]:
    import psutil  # noqa: PLC0415

    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "git_commit": _git_commit(repo),
        # The machine may be shared: a high load average makes every figure suspect.
        "load_average_at_start": os.getloadavg(),
    }
