"""relayd's late-bounce reader and flufl.bounce side by side on flufl.bounce's test corpus.

    .venv/bin/python bench/bounce_corpus.py [SDIST_DIR]

SDIST_DIR is an unpacked flufl.bounce sdist (its `tests/data` holds the messages and its
`tests/test_detectors.py` the addresses each one must yield); without it the sdist is
fetched with `pip download` into a temporary directory. relayd is measured as the poller
runs it (`might_be_bounce` on the headers, then `parse_dsn`). Recall: expected addresses
found; precision: addresses returned that were expected; kind: found addresses reported
with the right kind (delayed for a temporary failure, failed for a permanent one).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path

from flufl.bounce import all_failures

from relayd.dsn.parse import BounceParseError, might_be_bounce, parse_dsn
from relayd.policy.headers import header_block

Found = dict[str, str]  # lower-cased address -> "failed" | "delayed"
REPEATS = 5


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else _fetch_sdist()
    data = root / "tests" / "data"
    expected = _expected(root / "tests")
    corpus = {p.name: p.read_bytes() for p in sorted(data.glob("*.txt"))}
    print(f"flufl.bounce corpus: {len(corpus)} messages, {_count(expected)} expected addresses")
    print(f"{'reader':<14}{'recall':>9}{'precision':>11}{'kind':>8}{'msg/s':>10}")
    for name, reader in (("relayd", _relayd), ("flufl.bounce", _flufl)):
        recall, precision, kind, rate = _score(reader, corpus, expected)
        print(f"{name:<14}{recall:>8.1%}{precision:>11.1%}{kind:>8.1%}{rate:>10,.0f}")


def _relayd(raw: bytes) -> Found:
    if not might_be_bounce(header_block(raw)):
        return {}
    try:
        parsed = parse_dsn(raw)
    except BounceParseError:
        return {}
    if parsed is None:
        return {}
    return {
        r.final_recipient.lower(): r.action
        for r in parsed.recipients
        if r.action in ("failed", "delayed")
    }


def _flufl(raw: bytes) -> Found:
    temporary, permanent = all_failures(message_from_bytes(raw))
    found = {a.decode("utf-8", "replace").lower(): "delayed" for a in temporary}
    found.update({a.decode("utf-8", "replace").lower(): "failed" for a in permanent})
    return found


def _score(
    reader: Callable[[bytes], Found], corpus: dict[str, bytes], expected: dict[str, Found]
) -> tuple[float, float, float, float]:
    results: dict[str, Found] = {}
    start = time.perf_counter()
    for _ in range(REPEATS):
        results = {name: reader(raw) for name, raw in corpus.items()}
    rate = REPEATS * len(corpus) / (time.perf_counter() - start)
    hits = kinds = returned = 0
    for name, found in results.items():
        want = expected.get(name, {})
        returned += len(found)
        hits += len(found.keys() & want.keys())
        kinds += sum(found[a] == want[a] for a in found.keys() & want.keys())
    total = _count(expected)
    return hits / total, hits / max(returned, 1), kinds / max(hits, 1), rate


def _expected(tests: Path) -> dict[str, Found]:
    """Per file, the addresses flufl.bounce's detector tests expect, with their kind."""
    tree = ast.parse((tests / "test_detectors.py").read_text())
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "DETECTORS" for t in node.targets)
    )
    expected: dict[str, Found] = {}
    for _module, filename, addresses, temporary in ast.literal_eval(table):
        kind = "delayed" if temporary else "failed"
        found = expected.setdefault(filename, {})
        found.update({a.decode().lower(): kind for a in addresses})
    return expected


def _count(expected: dict[str, Found]) -> int:
    return sum(len(found) for found in expected.values())


def _fetch_sdist() -> Path:
    where = Path(tempfile.mkdtemp(prefix="flufl-bounce-"))
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, "-d", str(where), "flufl.bounce"], check=True)
    archive = next(where.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    return next(p for p in where.iterdir() if p.is_dir())


if __name__ == "__main__":
    main()
