"""Throughput and latency of ``POST /v1/query`` under concurrent load, by worker count.

For each worker count (1, then N), starts ``kbq serve --workers W`` on a free
loopback port over a fresh SQLite database (``kbq ingest`` of the bundled cases,
a temporary KBQ_HOME), warms it up, then drives it with C client threads (one
httpx client each, keep-alive) for a fixed time, cycling through a list of
realistic queries. Prints requests/s, p50/p99 latency and errors per worker
count. Loopback only; every loop is bounded by the duration; the server is
stopped at the end. Timing never decides a test; this script is for people.

    python benches/api_load.py [--workers 2] [--clients 8] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import httpx

REPO = Path(__file__).resolve().parents[1]

QUERIES = [
    "gemma3 loss 70 zero3",
    "qwen2 lora loss nan bf16",
    "deepspeed zero3 oom when saving checkpoint",
    "llava lora finetune: loss gets down to ~0.8 during first 20k steps, then creeps back up to around 6",
    "V100 上用 trl 的 DPOTrainer 训 vicuna，fp16，第二步开始 rewards 就全是 nan",
    "llama-factory 多卡 lora 训 llama2-7b，主进程 tokenize 半个多小时，其它 rank NCCL timeout",
    "预训练损失不降",
    "grad norm spikes after warmup then loss diverges",
    "更新 internlm main 分支后训 7B chat 模型，grad_norm 和 loss 都是 nan",
    "finetuning llama-13b with fastchat for 3 epochs, loss looks like a staircase: big drop at each epoch start",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


class Server:
    """``kbq serve`` on a free loopback port over a fresh database; a context manager.

    ``db``: None for a new SQLite file in a temporary directory, or the URL of an empty
    database (see :func:`postgres_database`). ``cases``: what ``kbq ingest`` loads (default:
    the bundled cases). ``env``: more variables for ingest and server (KBQ_API_TOKEN,
    KBQ_SEMANTIC, KBQ_CACHE_DIR). ``base`` is the temporary directory, ``url`` the server's.
    """

    name = "kbq serve"
    ready_path = "/readyz"

    def __init__(self, workers: int, startup_timeout: float = 60.0, *, db: str | None = None,
                 cases: Sequence[Path] = (), env: Mapping[str, str] | None = None):
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.db, self.cases, self.extra_env = db, list(cases), dict(env or {})

    def command(self) -> list[str]:
        """Prepare what the server needs under ``self.base``; the command that serves it."""
        db = self.db or str(self.base / "kbq.db")
        subprocess.run([sys.executable, "-m", "cli.main", "ingest", *map(str, self.cases), "--db", db], env=self.env,
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--db", db]

    def __enter__(self) -> "Server":
        self._tmp = tempfile.TemporaryDirectory(prefix="kbq-api-load-")
        self.base = Path(self._tmp.name)
        (self.base / "home").mkdir()
        self.env = {k: v for k, v in os.environ.items() if k not in ("KBQ_DB", "KBQ_DEBUG", "KBQ_API_TOKEN")}
        self.env["KBQ_HOME"] = str(self.base / "home")
        self.env.update(self.extra_env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.base / "serve.log", "wb")
        self.proc = None
        try:
            command = self.command()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.proc = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{self.name} --workers {self.workers} did not become ready; see its log above")

    def __exit__(self, *_exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        if self.proc is None or self.proc.returncode not in (0, -15, None):
            sys.stderr.write((self.base / "serve.log").read_text(errors="replace")[-2000:])
        self._tmp.cleanup()


class PeerServer(Server):
    """The peer: :func:`peer_app` (one SQLite insert per request) served by uvicorn as ``kbq serve`` serves."""

    name = "peer"
    ready_path = "/healthz"

    def command(self) -> list[str]:
        self.env["KBQ_PEER_DB"] = str(self.base / "peer.db")
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "benches"), "--factory", "api_load:peer_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"]


def peer_app() -> Any:
    """A trivial FastAPI app with kbq's chat and case-write routes, each doing one SQLite insert
    (WAL, a connection per thread) of the request body, and no more: what a request costs at the least."""
    import json
    import secrets
    import sqlite3

    from fastapi import Body, FastAPI

    path, local = os.environ["KBQ_PEER_DB"], threading.local()

    def insert(session: str, body: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            local.conn.execute("PRAGMA journal_mode=WAL")
            local.conn.execute("CREATE TABLE IF NOT EXISTS turns (id INTEGER PRIMARY KEY, session TEXT, body TEXT)")
        local.conn.execute("INSERT INTO turns (session, body) VALUES (?, ?)", (session, body))

    app = FastAPI()
    insert("", "")  # the file and its table exist before the first request

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat")
    def chat(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        session = body.get("session_id") or secrets.token_urlsafe(32)
        insert(session, str(body.get("message", "")))
        return {"session_id": session, "reply": "noted", "question": None}

    @app.post("/v1/cases", status_code=201)
    def write(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        insert("", json.dumps(body))
        return {"created": True, "case": body, "searchable": False}

    return app


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``base_url`` (a SQLAlchemy URL of an existing
    database); yields its URL and drops it at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(base_url)
    name = f"kbq_bench_{os.getpid()}_{free_port()}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def warm_up(url: str, clients: int) -> None:
    """Every worker has answered every query once (its index loaded), as far as load spreading allows."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(max(2, clients)):
            for query in QUERIES:
                client.post("/v1/query", json={"query": query}).raise_for_status()


def run_clients(clients: int, duration: float, client_loop: Callable[[int, Callable[[], float]], None]) -> float:
    """``client_loop(n, start)`` in ``clients`` threads at once: each sets up, then calls ``start()``,
    which returns when all are set up, with the ``time.perf_counter()`` to stop at. The wall seconds."""
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def start() -> float:
        start_line.wait()
        return stop_at[0]

    threads = [threading.Thread(target=client_loop, args=(n, start), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    start_line.wait()
    for thread in threads:
        thread.join(timeout=duration + 60)
    return time.perf_counter() - began


def drive(url: str, clients: int, duration: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client_loop(n: int, start: Callable[[], float]) -> None:
        mine, i = latencies[n], n
        with httpx.Client(base_url=url, timeout=30) as client:
            stop_at = start()
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    response = client.post("/v1/query", json={"query": QUERIES[i % len(QUERIES)]})
                    ok = response.status_code == 200 and "results" in response.json()
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                if ok:
                    mine.append(elapsed)
                else:
                    errors[n] += 1
                i += 1

    wall = run_clients(clients, duration, client_loop)
    done = sorted(x for per_client in latencies for x in per_client)
    return {
        "requests": len(done),
        "rps": len(done) / wall,
        "p50_ms": percentile(done, 0.50) * 1000,
        "p99_ms": percentile(done, 0.99) * 1000,
        "mean_ms": (statistics.fmean(done) * 1000) if done else float("nan"),
        "errors": sum(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="the worker count compared with 1 (default 2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per worker count (default 10)")
    args = parser.parse_args()
    if not (1 <= args.workers <= 64 and 1 <= args.clients <= 256 and 0 < args.duration <= 600):
        parser.error("workers 1-64, clients 1-256, duration 0-600 s")

    counts = sorted({1, args.workers})
    print(f"POST /v1/query, {args.clients} client threads, {args.duration:g} s per run, {len(QUERIES)} queries, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)
    rows = []
    for workers in counts:
        with Server(workers) as server:
            warm_up(server.url, args.clients)
            rows.append((workers, drive(server.url, args.clients, args.duration)))
        print(f"  {workers} worker(s): done", flush=True)

    print()
    print(f"{'workers':>7}  {'requests':>8}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  {'mean ms':>7}  {'errors':>6}")
    for workers, r in rows:
        print(f"{workers:>7}  {r['requests']:>8}  {r['rps']:>7.1f}  {r['p50_ms']:>7.1f}  {r['p99_ms']:>7.1f}  "
              f"{r['mean_ms']:>7.1f}  {r['errors']:>6}")


if __name__ == "__main__":
    main()
