"""Cold-start latency of a kbq query and of the read-only commands, next to a bare
interpreter and SQLite FTS5.

Each measurement is a new process (what a user at a terminal pays), with the
database and index already built. ``show``, ``list``, ``stats`` and ``db current``
read the SQLite file without SQLAlchemy, so they should cost about what a query
does. Prints medians of N runs and their ratio to ``python -c pass`` measured in
the same run, so the figures compare across machines. Timing never decides a
test; this script is for people.

    python benches/cold_query.py [--runs 15] [--query "gemma3 loss 70 zero3"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FTS_SCRIPT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute(
    "SELECT id FROM cases WHERE cases MATCH ? ORDER BY bm25(cases) LIMIT 5", (sys.argv[2],)
).fetchall()
print(rows)
"""


def timed(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return samples


def build_fts(path: Path, home: Path) -> None:
    """An FTS5 table over the same case documents kbq indexes (title, symptom, causes, fixes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kb.service import KnowledgeBase

    cases = KnowledgeBase(home=home).index().all_documents()
    conn = sqlite3.connect(path)
    conn.execute("CREATE VIRTUAL TABLE cases USING fts5(id, body)")
    for case in cases:
        body = " ".join([case["title"], case["symptom"], *case["causes"], *(f["action"] for f in case["fixes"])])
        conn.execute("INSERT INTO cases VALUES (?, ?)", (case["id"], body))
    conn.commit()
    conn.close()


def first_case_id(kbq: str, env: dict[str, str]) -> str:
    import json

    listed = subprocess.run([kbq, "list", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(listed)[0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--query", default="gemma3 loss 70 zero3")
    args = parser.parse_args()

    kbq = shutil.which("kbq") or str(Path(sys.executable).with_name("kbq"))
    home = Path(tempfile.mkdtemp(prefix="kbq-bench-"))
    env = {**os.environ, "KBQ_HOME": str(home)}
    env.pop("KBQ_DB", None)
    # An installed kbq has its bytecode compiled; a shell that forbids writing it would make
    # every run recompile kbq's modules from source and time that instead.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        first = time.perf_counter()
        subprocess.run([kbq, args.query], env=env, stdout=subprocess.DEVNULL, check=True)
        first_run = time.perf_counter() - first
        fts_db = home / "fts.db"
        build_fts(fts_db, home)
        fts_query = " OR ".join(args.query.split())
        case_id = first_case_id(kbq, env)

        rows = [
            ("python -c pass", timed([sys.executable, "-c", "pass"], env, args.runs)),
            (f'kbq "{args.query}"', timed([kbq, args.query], env, args.runs)),
            (f'kbq --json "{args.query}"', timed([kbq, "--json", args.query], env, args.runs)),
            ("sqlite3 FTS5 bm25 (python)", timed([sys.executable, "-c", FTS_SCRIPT, str(fts_db), fts_query], env, args.runs)),
            *((f"kbq {' '.join(words)}", timed([kbq, *words], env, args.runs))
              for words in (["show", case_id], ["list"], ["stats"], ["db", "current"])),
        ]
    finally:
        shutil.rmtree(home, ignore_errors=True)

    baseline = statistics.median(rows[0][1])
    print(f"cold-process latency, median of {args.runs} runs (DB and index already built)")
    print(f"{'command':<44} {'median':>9} {'min':>9} {'x python':>9}")
    for name, samples in rows:
        median = statistics.median(samples)
        print(f"{name:<44} {median * 1000:>7.0f}ms {min(samples) * 1000:>7.0f}ms {median / baseline:>9.1f}")
    print(f"first query on a fresh home (creates DB, ingests, fits index): {first_run * 1000:.0f}ms (one run)")


if __name__ == "__main__":
    main()
