"""What a worker could not hand to Redis when it closed: a file beside its own output,
replayed into the crawl later (when a worker of the crawl next starts with that
directory, or by ``scrapy asyncfetch-export --unsent PATH``).

One JSON object a line: a header naming the crawl and the worker, then the outcomes
not recorded, the requests not pushed (payloads in base64) and the states of the
domains it leased. Replaying is safe to repeat: Redis keeps the first outcome of each
request, and recognises a request it has already.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage import atomic_write
from .frontier import Frontier, Push, Settle, SyncBatch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis

    from .keys import Keys

PREFIX = "cluster-unsent-"
#: Outcomes and requests per Lua call when replaying.
PER_CALL = 500


@dataclass
class Unsent:
    crawl: str
    worker: str
    settle: list[Settle] = field(default_factory=list)
    push: list[Push] = field(default_factory=list)
    #: (domain, state, seconds until its next start) of the domains the worker leased.
    states: list[tuple[str, str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.settle or self.push)


def path_for(directory: str, worker: str) -> Path:
    return Path(directory) / f"{PREFIX}{worker}.jsonl"


def write(path: Path, unsent: Unsent) -> None:
    """Write ``unsent`` to ``path`` atomically (a reader never sees half a file)."""
    lines: list[dict[str, object]] = [{"crawl": unsent.crawl, "worker": unsent.worker}]
    lines += [{"settle": [s.id, s.kind, s.record]} for s in unsent.settle]
    lines += [
        {
            "push": [
                p.id,
                p.fingerprint,
                p.domain,
                base64.b64encode(p.payload).decode(),
                p.replace,
            ]
        }
        for p in unsent.push
    ]
    lines += [{"state": list(state)} for state in unsent.states]
    text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
    atomic_write(str(path), text.encode(), durable=True)


def read(path: Path) -> Unsent:
    """Raise ValueError naming ``path`` if it is not such a file."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        header = lines[0]
        unsent = Unsent(str(header["crawl"]), str(header["worker"]))
        for line in lines[1:]:
            if "settle" in line:
                unsent.settle.append(Settle(*line["settle"]))
            elif "push" in line:
                id_, fingerprint, domain, payload, replace = line["push"]
                push = Push(id_, fingerprint, domain, base64.b64decode(payload), bool(replace))
                unsent.push.append(push)
            elif "state" in line:
                domain, state, remaining = line["state"]
                unsent.states.append((domain, state, float(remaining)))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path} is not a file of unsent cluster records: {exc}") from exc
    return unsent


def find(paths: Iterable[str]) -> list[Path]:
    """The unsent files among ``paths``: files as given, directories searched (not
    recursively) for files named as workers name them."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(path.glob(f"{PREFIX}*.jsonl"))
        else:
            found.append(path)
    return found


def find_in(directory: str) -> list[Path]:
    """The unsent files in ``directory`` (none if it does not exist yet)."""
    return find([directory]) if os.path.isdir(directory) else []


async def replay_files(redis: Redis, keys: Keys, paths: Iterable[Path]) -> tuple[int, int]:
    """Replay each file of this crawl, deleting it once its records are in Redis (and
    they are in its worker's own files too); return (files, outcomes recorded). Raise
    ValueError naming a file that is not one, or is another crawl's."""
    files = settled = 0
    for path in paths:
        try:
            unsent = read(path)
        except OSError as exc:
            raise ValueError(f"Cannot read {path}: {exc}") from exc
        if unsent.crawl != keys.crawl:
            raise ValueError(f"{path} is of crawl {unsent.crawl!r}, not {keys.crawl!r}")
        settled += await replay(redis, keys, unsent)
        path.unlink()
        files += 1
    return files, settled


async def replay(redis: Redis, keys: Keys, unsent: Unsent) -> int:
    """Record ``unsent`` in the crawl as its worker would have, then give back what
    that worker still held (its requests without an outcome are fetched again).
    Return how many outcomes were recorded (not recorded: another worker's came first)."""
    frontier = Frontier(redis, keys, unsent.worker, lease=1.0)
    settled = 0
    for start in range(0, max(len(unsent.settle), len(unsent.push)), PER_CALL):
        batch = SyncBatch(
            settle=unsent.settle[start : start + PER_CALL],
            push=unsent.push[start : start + PER_CALL],
        )
        settled += (await frontier.sync(batch)).settled
    await frontier.keep(unsent.states, leaving=True)
    return settled
