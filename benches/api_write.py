"""Case writes through the API on a 10k-case base: how long ``POST /v1/cases`` takes, and
how soon after it returns a search finds the new case.

Generates a base of N synthetic cases (default 10,000) with ``benches/scale.py``'s
generator (fixed seed), ingests it with ``kbq ingest`` into a fresh SQLite file (and,
with ``--postgres``, a fresh PostgreSQL database, dropped at the end), starts ``kbq
serve`` with a write token and waits until it is ready (the first index build: with the
semantic stage on, embedding 10k cases takes minutes; ``--lexical`` sets KBQ_SEMANTIC=0).
Then it makes W writes (default 20, a few seconds apart) of new cases whose title and
symptom carry two made-up words found in no other case, and measures for each:

* the POST's latency with the default ``refresh=false`` (it answers once committed), and
  the time from its return until ``POST /v1/query`` with the two words returns that case
  in its top 5 (polled every 50 ms, at most 120 s), and how often it is first. Only that
  case holds the words, so it is returned once the index has it; with the semantic stage
  on, words without meaning leave its rank to other cases' cosine noise (with its title as
  the query, feature matches of similar synthetic cases do the same now and then);
* the POST's latency with ``?refresh=wait_for`` (W more writes), and whether a query
  right after it returns the case.

Beside them, the peer: a FastAPI app whose POST /v1/cases does one SQLite insert, served
by uvicorn the same way. Prints medians, p90s and maxima. Loopback only; every loop is
bounded. Timing never decides a test; this script is for people.

    python benches/api_write.py [--cases 10000] [--writes 20] [--spacing 3] [--lexical]
        [--postgres [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from api_load import PeerServer, Server, percentile, postgres_database
from scale import Vocabulary, generate, write_yaml

SEED = 20240601  # scale.py's default: the same synthetic cases
TOKEN = "bench-token"
POLL_SECONDS, SEARCHABLE_LIMIT = 0.05, 120.0


def made_up_word(rng: random.Random) -> str:
    """Nine letters, consonant then vowel, ending in a consonant: no case or lexicon entry has it."""
    return "".join(rng.choice("bdfgklmnprtvz") + rng.choice("aeiou") for _ in range(4)) + rng.choice("kmnrt")


def new_case(vocab: Vocabulary, number: int, words: list[str]) -> dict[str, Any]:
    """A realistic made-up case, beyond the base's numbering, whose title and symptom carry ``words``."""
    doc = generate(vocab, SEED, 10_000_000 + number, 1)[0]
    phrase = " ".join(words)
    doc.update(id=f"bench-write-{'-'.join(words)}", title=f"{phrase}: {doc['title']}", symptom=f"{phrase}. {doc['symptom']}",
               related=[])
    return doc


def rank(client: httpx.Client, words: list[str], case_id: str) -> int | None:
    """Where a query for ``words`` puts ``case_id`` in its top 5 (1 = first), or None."""
    response = client.post("/v1/query", json={"query": " ".join(words), "top_k": 5})
    response.raise_for_status()
    ids = [result["id"] for result in response.json()["results"]]
    return ids.index(case_id) + 1 if case_id in ids else None


def searchable_after(client: httpx.Client, words: list[str], case_id: str) -> tuple[float, int] | None:
    """Seconds until a query for ``words`` returns ``case_id``, and its rank then; None after the limit."""
    began = time.perf_counter()
    while time.perf_counter() - began < SEARCHABLE_LIMIT:
        found = rank(client, words, case_id)
        if found is not None:
            return time.perf_counter() - began, found
        time.sleep(POLL_SECONDS)
    return None


def write(client: httpx.Client, case: dict[str, Any], refresh: str | None) -> float:
    """Seconds the POST took; it must have created the case."""
    began = time.perf_counter()
    response = client.post("/v1/cases", json=case, params={"refresh": refresh} if refresh else None,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    elapsed = time.perf_counter() - began
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/cases answered {response.status_code}: {response.text[:300]}")
    return elapsed


def measure_kbq(server: Server, vocab: Vocabulary, rng: random.Random, writes: int, spacing: float) -> dict[str, Any]:
    """Timed writes with refresh=false (and the wait until searchable), then with refresh=wait_for."""
    result: dict[str, Any] = {"post": [], "searchable": [], "first": 0, "never": 0, "wait_for": [], "wait_for_missed": 0}
    with httpx.Client(base_url=server.url, timeout=SEARCHABLE_LIMIT + 60) as client:
        for _ in range(3):  # every worker has its index and encoder loaded, as far as load spreading allows
            rank(client, ["deepspeed", "zero3", "oom"], "")
        for number in range(2 * writes):
            words = [made_up_word(rng), made_up_word(rng)]
            case = new_case(vocab, number, words)
            if number < writes:
                result["post"].append(write(client, case, None))
                after = searchable_after(client, words, case["id"])
                if after is None:
                    result["never"] += 1
                else:
                    result["searchable"].append(after[0])
                    result["first"] += after[1] == 1
            else:
                result["wait_for"].append(write(client, case, "wait_for"))
                result["wait_for_missed"] += rank(client, words, case["id"]) is None
            time.sleep(spacing)
    return result


def measure_peer(vocab: Vocabulary, rng: random.Random, writes: int, workers: int) -> list[float]:
    with PeerServer(workers) as peer, httpx.Client(base_url=peer.url, timeout=60) as client:
        write(client, new_case(vocab, -1, ["warm", "up"]), None)
        return [write(client, new_case(vocab, n, [made_up_word(rng), made_up_word(rng)]), None) for n in range(writes)]


def summary(values: list[float]) -> str:
    if not values:
        return f"{'-':>8}  {'-':>8}  {'-':>8}"
    ordered = sorted(values)
    return f"{statistics.median(ordered) * 1000:>8.0f}  {percentile(ordered, 0.9) * 1000:>8.0f}  {ordered[-1] * 1000:>8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="synthetic cases in the base (default 10000)")
    parser.add_argument("--writes", type=int, default=20, help="writes of each kind (default 20)")
    parser.add_argument("--spacing", type=float, default=3.0, help="seconds between writes (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="kbq serve --workers, and the peer's (default 1)")
    parser.add_argument("--lexical", action="store_true", help="KBQ_SEMANTIC=0: no embeddings")
    parser.add_argument("--postgres", action="store_true", help="also on a fresh PostgreSQL database")
    parser.add_argument("--pg-url", default=os.environ.get("KBQ_TEST_DB_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help="an existing PostgreSQL database; a new one is created beside it and dropped")
    args = parser.parse_args()
    if not (1 <= args.cases <= 200_000 and 1 <= args.writes <= 500 and 0 <= args.spacing <= 60 and 1 <= args.workers <= 16):
        parser.error("cases 1-200000, writes 1-500, spacing 0-60 s, workers 1-16")

    stage = "lexical only" if args.lexical else "lexical + semantic"
    print(f"POST /v1/cases on {args.cases:,} cases ({stage}), {args.writes} writes of each kind {args.spacing:g} s apart, "
          f"{args.workers} worker(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"Python {sys.version.split()[0]}", flush=True)
    vocab, rng = Vocabulary.bundled(), random.Random(SEED)
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="kbq-api-write-") as tmp:
        began = time.perf_counter()
        write_yaml(generate(vocab, SEED, 0, args.cases), Path(tmp) / "cases")
        print(f"  generated {args.cases:,} cases in {time.perf_counter() - began:.0f} s", flush=True)
        # One vector cache for both databases: the second embeds nothing the first did.
        env = {"KBQ_API_TOKEN": TOKEN, "KBQ_SEMANTIC": "0" if args.lexical else "1", "KBQ_CACHE_DIR": f"{tmp}/cache"}
        for name in ["SQLite", *(["PostgreSQL"] if args.postgres else [])]:
            with ExitStack() as stack:
                db = stack.enter_context(postgres_database(args.pg_url)) if name == "PostgreSQL" else None
                began = time.perf_counter()
                server = stack.enter_context(Server(args.workers, 3600, db=db, cases=[Path(tmp) / "cases"], env=env))
                print(f"  {name}: ingested, indexed and ready in {time.perf_counter() - began:.0f} s", flush=True)
                rows.append((name, measure_kbq(server, vocab, rng, args.writes, args.spacing)))
            print(f"  {name}: done", flush=True)
        peer = measure_peer(vocab, rng, args.writes, args.workers)

    print()
    print(f"{'':<46}  {'median':>8}  {'p90':>8}  {'max':>8}  (ms)")
    for name, r in rows:
        print(f"kbq, {name}")
        print(f"{'  POST /v1/cases (refresh=false)':<46}  {summary(r['post'])}")
        never = f", not found within {SEARCHABLE_LIMIT:g} s: {r['never']}" if r["never"] else ""
        print(f"{'  searchable, from the POST return':<46}  {summary(r['searchable'])}  "
              f"(first in {r['first']} of {len(r['searchable'])}{never})")
        missed = f"  not found right after: {r['wait_for_missed']}" if r["wait_for_missed"] else ""
        print(f"{'  POST /v1/cases?refresh=wait_for':<46}  {summary(r['wait_for'])}{missed}")
    print(f"{'peer: FastAPI + 1 SQLite insert, POST':<46}  {summary(peer)}")


if __name__ == "__main__":
    main()
