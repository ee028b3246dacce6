"""Concurrent multi-turn chat on ``POST /v1/chat``, over SQLite and PostgreSQL, beside a trivial peer.

C client threads (default 32; one httpx client each, keep-alive) hold conversations
for D seconds (default 30): a first message that reports a training problem (English
or Chinese), then 1-3 follow-ups that answer the assistant's question (an option, its
number, "not sure"), add a detail, or say "start over", each sent with the
``session_id`` the server issued on the first turn. Runs against ``kbq serve
--workers W`` over (i) a fresh SQLite file and (ii) a fresh PostgreSQL database
(created, ``kbq ingest`` of the bundled cases, dropped at the end), then against the
peer: a FastAPI app whose /v1/chat does one SQLite insert per turn, served by uvicorn
with the same workers, so kbq's figures read as a ratio. Prints turns, turns/s,
p50/p99 latency and every non-2xx answer or exception by kind. Loopback only; every
loop is bounded by the duration. Timing never decides a test; this script is for people.

    python benches/chat_load.py [--clients 32] [--duration 30] [--workers 2]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test | --no-postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from api_load import PeerServer, Server, percentile, postgres_database, run_clients

FIRST = {
    "en": [
        "my gemma 3 loss looks wrong, far too high: it starts around 70 and stays there",
        "qwen2 lora finetune, loss goes nan after a few hundred steps in bf16",
        "deepspeed zero3 runs out of memory when saving the checkpoint at the end of the epoch",
        "llava lora finetune: loss gets down to ~0.8 during first 20k steps, then creeps back up to around 6",
        "grad norm spikes after warmup then the loss diverges, llama 2 7b full finetune on 8 A100",
        "finetuning llama-13b with fastchat for 3 epochs, loss looks like a staircase: big drop at each epoch start",
        "DPO training with trl, rewards/chosen and rewards/rejected both become nan from step 2",
        "pretraining a 1b model, the loss plateaus at 7 and will not go down",
        "Attempting to unscale FP16 gradients error when I start lora training",
        "multi-node training hangs at the first all-reduce, NCCL watchdog timeout after 30 minutes",
    ],
    "zh": [
        "V100 上用 trl 的 DPOTrainer 训 vicuna，fp16，第二步开始 rewards 就全是 nan",
        "llama-factory 多卡 lora 训 llama2-7b，主进程 tokenize 半个多小时，其它 rank NCCL timeout",
        "预训练损失不降，一直卡在 7 左右",
        "更新 internlm main 分支后训 7B chat 模型，grad_norm 和 loss 都是 nan",
        "qwen2.5 全参微调，loss 从 2 突然涨到 10 以上",
        "用 deepspeed zero3 保存模型的时候爆显存",
        "训练到一半 loss 变成 0，学习率正常",
        "glm4 lora 微调后模型只会重复输出同一句话",
    ],
}
DETAILS = {
    "en": ["it happens with deepspeed zero2 too", "I am using bf16 on A100 80GB", "learning rate is 2e-5 with cosine schedule",
           "batch size 64, sequence length 4096", "the same config worked last week before I upgraded transformers",
           "8 GPUs, one node", "loss was 1.8 at step 100", "it is a lora run with rank 8"],
    "zh": ["换成 zero2 也一样", "用的是 bf16，A100 80G", "学习率 2e-5，cosine", "batch size 64，序列长度 4096",
           "升级 transformers 之前同样的配置是好的", "单机 8 卡", "第 100 步 loss 是 1.8", "是 lora，rank 8"],
}
NOT_SURE = {"en": "not sure", "zh": "不知道"}
START_OVER = {"en": "start over", "zh": "重新开始"}


@dataclass
class Tally:
    """One client's turns: latencies of the answered ones, and the failures by kind."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    conversations: int = 0


def follow_up(rng: random.Random, language: str, answer: dict[str, Any]) -> str:
    """What a user says next, given the assistant's answer."""
    question, roll = answer.get("question"), rng.random()
    if roll >= 0.9:
        return START_OVER[language]
    if question and question.get("options"):
        options = question["options"]
        if roll < 0.5:
            return rng.choice(options)
        if roll < 0.65:
            return str(rng.randint(1, len(options)))
        if roll < 0.8:
            return NOT_SURE[language]
    return rng.choice(DETAILS[language])


def turn(client: httpx.Client, tally: Tally, message: str, session_id: str | None) -> dict[str, Any] | None:
    """One turn; its answer, or None after counting the failure (a wrong session id is one)."""
    started = time.perf_counter()
    try:
        response = client.post("/v1/chat", json={"message": message, **({"session_id": session_id} if session_id else {})})
        body = response.json()
    except (httpx.HTTPError, ValueError) as err:
        tally.errors[type(err).__name__] += 1
        return None
    elapsed = time.perf_counter() - started
    if not 200 <= response.status_code < 300:
        code = body.get("error", {}).get("code", "?") if isinstance(body, dict) else "?"
        tally.errors[f"{response.status_code} {code}"] += 1
        return None
    if not body.get("session_id") or (session_id and body["session_id"] != session_id):
        tally.errors["2xx without its session_id"] += 1
        return None
    tally.latencies.append(elapsed)
    return body


def converse(client: httpx.Client, tally: Tally, rng: random.Random, stop_at: float) -> None:
    """One conversation: a report, then 1-3 follow-ups on its session, while time remains."""
    language = rng.choice(["en", "en", "zh"])
    answer = turn(client, tally, rng.choice(FIRST[language]), None)
    tally.conversations += 1
    for _ in range(rng.randint(1, 3)):
        if answer is None or time.perf_counter() >= stop_at:
            return
        message = rng.choice(FIRST[language]) if answer.get("reset") else follow_up(rng, language, answer)
        answer = turn(client, tally, message, answer["session_id"])


def drive(url: str, clients: int, duration: float) -> dict[str, Any]:
    tallies = [Tally() for _ in range(clients)]

    def client_loop(n: int, start: Callable[[], float]) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=url, timeout=30) as client:
            stop_at = start()
            while time.perf_counter() < stop_at:
                converse(client, tallies[n], rng, stop_at)

    wall = run_clients(clients, duration, client_loop)
    done = sorted(x for t in tallies for x in t.latencies)
    errors: Counter[str] = sum((t.errors for t in tallies), Counter())
    return {"turns": len(done), "conversations": sum(t.conversations for t in tallies), "tps": len(done) / wall,
            "p50_ms": percentile(done, 0.50) * 1000, "p99_ms": percentile(done, 0.99) * 1000, "errors": errors}


def warm_up(url: str, workers: int) -> None:
    """A few concurrent conversations, so that each worker has loaded its index and encoder."""
    threads = [threading.Thread(target=warm_conversation, args=(url, n)) for n in range(2 * workers + 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def warm_conversation(url: str, n: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        converse(client, Tally(), random.Random(-1 - n), time.perf_counter() + 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent chat clients (default 32)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per server (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="server processes, kbq's and the peer's (default 2)")
    parser.add_argument("--pg-url", default=os.environ.get("KBQ_TEST_DB_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help="an existing PostgreSQL database; a new one is created beside it and dropped")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite and the peer only")
    args = parser.parse_args()
    if not (1 <= args.workers <= 16 and 1 <= args.clients <= 256 and 0 < args.duration <= 600):
        parser.error("workers 1-16, clients 1-256, duration 0-600 s")

    print(f"POST /v1/chat, {args.clients} clients, {args.duration:g} s per server, {args.workers} worker(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}", flush=True)
    targets: list[tuple[str, Callable[[ExitStack], Server]]] = [("kbq, SQLite", lambda _: Server(args.workers))]
    if not args.no_postgres:
        targets.append(("kbq, PostgreSQL",
                        lambda stack: Server(args.workers, db=stack.enter_context(postgres_database(args.pg_url)))))
    targets.append(("peer: FastAPI + 1 SQLite insert", lambda _: PeerServer(args.workers)))

    rows = []
    for name, make in targets:
        with ExitStack() as stack:
            server = stack.enter_context(make(stack))
            warm_up(server.url, args.workers)
            rows.append((name, drive(server.url, args.clients, args.duration)))
        print(f"  {name}: done", flush=True)

    print()
    print(f"{'server':<32}  {'turns':>6}  {'convs':>5}  {'turns/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  errors")
    for name, r in rows:
        errors = ", ".join(f"{kind}: {n}" for kind, n in r["errors"].most_common()) or "0"
        print(f"{name:<32}  {r['turns']:>6}  {r['conversations']:>5}  {r['tps']:>7.1f}  {r['p50_ms']:>7.1f}  "
              f"{r['p99_ms']:>7.1f}  {errors}")


if __name__ == "__main__":
    main()
