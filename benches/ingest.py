"""How long ``kbq ingest DIR --db X`` takes, and how much memory, next to SQLite FTS5.

Generates N synthetic cases as YAML files with the generator of
:mod:`benches.scale` (same seed, so the same cases as its N), then, in every
run, times a fresh ``kbq ingest DIR --db X`` process into a new SQLite file and
into a new PostgreSQL database (created and dropped here), and builds SQLite
FTS5 over the same cases' texts (scale.py's FTS5 worker) as the named peer.
Wall time and peak RSS are those of each process (``wait4``), measured as
scale.py measures its ingest step. Runs alternate the three, so load on a
shared machine hits them alike; the table shows medians and the range.

    python benches/ingest.py                        # 100k cases, 3 runs (~15 min on 2 cores)
    python benches/ingest.py --cases 10000 --runs 5
    python benches/ingest.py --pg-url none          # SQLite and FTS5 only

PostgreSQL comes from ``--pg-url`` (default: ``KBQ_TEST_DB_URL``), a URL of
any database on the server; the bench needs the right to CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the generator and process measurement shared with the scale bench)
from api_load import postgres_database  # noqa: E402  (a throwaway PostgreSQL database)

GENERATE_CHUNK = 5000  # cases generated and written at a time: the bench's own memory stays flat


def write_cases(n: int, seed: int, cases_dir: Path, corpus: Path) -> None:
    """N case files, and beside them the texts the BM25 peers index (one JSON line per case)."""
    vocab = scale.Vocabulary.bundled()
    with open(corpus, "w", encoding="utf-8") as handle:
        for first in range(0, n, GENERATE_CHUNK):
            docs = scale.generate(vocab, seed, first, min(GENERATE_CHUNK, n - first))
            scale.write_yaml(docs, cases_dir)
            for doc in docs:
                handle.write(json.dumps({"id": doc["id"], "text": scale.peer_text(doc)}, ensure_ascii=False) + "\n")


def ingest_once(runner: scale.Runner, cases_dir: Path, db: str, n: int, timeout: float) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one ``kbq ingest`` into an empty database."""
    measured = runner.measure([*scale.kbq_command(), "ingest", str(cases_dir), "--db", db], timeout)
    if f"{n} added" not in measured.stdout:
        raise RuntimeError(f"expected {n} added, got: {measured.stdout.strip()}")
    return measured.seconds, measured.peak_rss_mb


def fts_once(runner: scale.Runner, corpus: Path, db: Path, timeout: float) -> tuple[float, float]:
    """(seconds, peak RSS MB) of the FTS5 worker process: read the texts, build, commit."""
    db.unlink(missing_ok=True)
    result = runner.worker("fts-build", {"corpus": str(corpus), "db": str(db)}, timeout)
    db.unlink()
    return result["process_seconds"], result["peak_rss_mb"]


def summary(samples: list[tuple[float, float]]) -> tuple[str, str]:
    """Median (min-max) of the seconds and of the peak RSS."""
    seconds, rss = [s for s, _ in samples], [m for _, m in samples]
    return (f"{statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})",
            f"{statistics.median(rss):.0f} ({min(rss):.0f}-{max(rss):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240601, help="as scale.py, so the cases are the same")
    parser.add_argument("--pg-url", default=os.environ.get("KBQ_TEST_DB_URL", "none"),
                        help="a PostgreSQL URL to create the bench's databases from; 'none' skips PostgreSQL")
    args = parser.parse_args()
    if args.cases < 1 or not 1 <= args.runs <= 20:
        parser.error("--cases must be positive, --runs 1..20")
    sys.path.insert(0, str(scale.ROOT))
    timeout = 900 + args.cases * 0.05  # generous, as scale.py bounds its ingest step
    work = Path(tempfile.mkdtemp(prefix="kbq-ingest-"))
    try:
        cases_dir, corpus = work / "cases", work / "corpus.jsonl"
        start = time.perf_counter()
        write_cases(args.cases, args.seed, cases_dir, corpus)
        scale.log(f"{args.cases} cases generated in {time.perf_counter() - start:.0f}s under {work}")
        runner = scale.Runner(work / "home", semantic=False)
        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            "kbq ingest, SQLite": lambda: ingest_once(runner, cases_dir, str(work / "kbq.db"), args.cases, timeout),
        }
        if args.pg_url != "none":
            def on_postgres() -> tuple[float, float]:
                with postgres_database(args.pg_url) as url:
                    return ingest_once(runner, cases_dir, url, args.cases, timeout)

            contenders["kbq ingest, PostgreSQL"] = on_postgres
        contenders["SQLite FTS5 build (peer)"] = lambda: fts_once(runner, corpus, work / "fts.db", timeout)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for run in range(args.runs):
            for name, once in contenders.items():
                (work / "kbq.db").unlink(missing_ok=True)
                samples[name].append(once())
                scale.log(f"run {run + 1}: {name}: {samples[name][-1][0]:.1f}s, {samples[name][-1][1]:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"kbq ingest bench: {args.cases} cases, {args.runs} run(s), {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
          "each figure is one process (wall time, peak RSS): median (min-max)")
    rows = [("", "wall, s", "peak RSS, MB"), *((name, *summary(found)) for name, found in samples.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")


if __name__ == "__main__":
    main()
