"""How kbq scales with the number of cases: synthetic bases of 1k, 10k, 100k cases.

For each size N the script generates N cases in kbq's own format (dicts that
validate as :class:`kb.models.Case`), recombining the vocabulary of the bundled
cases (titles, symptoms, user phrasing, causes, fixes, models, frameworks,
hardware, configs, tags) with fresh numbers, from a fixed seed: case ``i`` is
the same in every run and every size, so the 1k base is the first 1k cases of
the 10k base. About 40% of the cases are Chinese-sourced (``language: zh``,
Chinese title and symptom); every case carries bilingual ``user_phrasing``, as
every bundled case does.

Then, in one run and one table:

* ingest through the real user path: YAML files in a directory and
  ``kbq ingest DIR --db X`` as a subprocess (wall time of the process);
* index build in a new process through ``KnowledgeBase.index()`` (what the first
  query after a change pays), lexical only (``KBQ_SEMANTIC=0``) and full with
  case embeddings (time spent in ``Encoder.encode`` reported on its own; the
  model's unpacked copy is written beforehand so its one-off set-up is not
  counted); then 100 more cases are ingested and the index rebuilt, where the
  vector cache must supply every unchanged case (the texts embedded are shown);
* index size on disk (the index directory; vector cache and database apart);
* cold ``kbq --db X "QUERY"`` processes (median of ``--cold-runs``);
* warm ``KnowledgeBase.search(q, k=5)`` plus its JSON document (features and
  explanations) over ~200 varied queries in one process (English, Chinese,
  pasted multi-line issue text, and reports paraphrasing synthetic cases,
  whose recall is a sanity check), with p50/p99 and the process RSS;
* the same corpus in bm25s (build, warm p50/p99, RSS of a separate query
  process over the saved index) and SQLite FTS5 (build, warm p50/p99, cold
  process), both over kbq's English words and Chinese bigrams without the
  lexicon (FTS5 with its default unicode61 tokenizer and an OR of the words).

Every measurement that reports memory runs in its own subprocess; every
subprocess has a timeout. kbq's data and cache directories (``KBQ_HOME``,
``KBQ_CACHE_DIR``, the XDG ones, ``HOME``) point into a temporary directory per size.
Workers import kbq from this checkout (``PYTHONPATH`` = the repository root).
Latencies on a shared machine are noisy: the table shows the load average.

    python benches/scale.py --sizes 1000 10000        # ~30 min on 2 cores, mostly embedding 50k texts
    python benches/scale.py                           # 1000 10000 100000: the full run (hours)
    python benches/scale.py --sizes 100000 --semantic-max-cases 10000   # 100k lexical only (~40 min)
    python benches/scale.py --sizes 1000 --blas-threads 2   # OpenBLAS threads for the kbq processes (default 1)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES_DIR = ROOT / "cases"
QUERY_FILES = [
    ROOT.parent / "shared" / "eval" / "dev_queries.jsonl",
    ROOT.parent / "shared" / "eval" / "real_reports.jsonl",
    ROOT / "tests" / "eval_queries.jsonl",
]
COLD_QUERY = "gemma3 loss 70 zero3"
RESULT_MARK = "SCALE-RESULT "
CJK = re.compile(r"[\u3400-\u9fff]")
FTS_COLD_SCRIPT = """
import re, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
terms = sorted(set(re.findall(r"\\w+", sys.argv[2].lower())))
match = " OR ".join('"' + t + '"' for t in terms)
print(conn.execute("SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 5", (match,)).fetchall())
"""


# -- vocabulary of the bundled cases -------------------------------------------------------


def _sentences_en(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if 20 <= len(p) <= 320]


def _sentences_zh(text: str) -> list[str]:
    parts = re.split(r"(?<=[。！？；])", "".join(text.split("\n")))
    return [p.strip() for p in parts if 6 <= len(p.strip()) <= 200 and CJK.search(p)]


def _clauses(title: str) -> list[str]:
    parts = re.split(r"\s*(?:[:;—–]|, | \(|\) )\s*", title)
    return [p.strip(" ()") for p in parts if 8 <= len(p.strip(" ()")) <= 110]


class Vocabulary:
    """Pools of realistic parts, drawn from the bundled cases."""

    def __init__(self, documents: list[dict[str, Any]]):
        if not documents:
            raise SystemExit(f"no bundled cases found in {CASES_DIR}")
        self.models = [d["model"] for d in documents]
        self.frameworks = [d["framework"] for d in documents]
        self.hardware = [d["hardware"] for d in documents if d.get("hardware")]
        self.configs = [d["config"] for d in documents if d.get("config")] or [{}]
        self.phases = [d["phase"] for d in documents if d.get("phase")]
        self.clauses = sorted({c for d in documents for c in _clauses(d["title"])})
        self.symptom_en = sorted({s for d in documents for s in _sentences_en(d["symptom"])})
        phrasing = [d.get("user_phrasing") or {} for d in documents]
        self.phrasing_en = sorted({s for p in phrasing for s in _sentences_en(p.get("en", ""))})
        self.phrasing_zh = sorted({s for p in phrasing for s in _sentences_zh(p.get("zh", ""))})
        self.queries = sorted({q for p in phrasing for q in p.get("queries", [])})  # short reports, when the format has them
        self.zh_clauses = sorted({c.strip("，, ") for s in self.phrasing_zh for c in re.split(r"[，。；！？]", s) if 6 <= len(c.strip()) <= 40})
        self.causes = sorted({c for d in documents for c in d["causes"]})
        self.fixes = [f for d in documents for f in d["fixes"]]
        self.tags = sorted({t for d in documents for t in d.get("tags", [])})
        self.metrics = sorted({o["metric"] for d in documents for o in d.get("observations", [])}) or ["loss"]
        self.gpus = sorted({h["accelerator"] for h in self.hardware if h.get("accelerator")}) or ["A100-SXM4-80GB"]
        repos = {m.group(1) for d in documents for s in d["sources"] for m in [re.search(r"github\.com/([\w.-]+/[\w.-]+)", s)] if m}
        self.repos = sorted(repos) or ["hiyouga/LLaMA-Factory"]
        self.id_prefixes = sorted({re.sub(r"-\d+$", "", d["id"]) for d in documents})
        for name in ("clauses", "symptom_en", "phrasing_en", "phrasing_zh", "zh_clauses", "causes", "fixes", "tags", "phases"):
            if not getattr(self, name):
                raise SystemExit(f"the bundled cases gave no {name}: the generator needs them")

    @classmethod
    def bundled(cls) -> "Vocabulary":
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        docs = [yaml.load(p.read_text(encoding="utf-8"), Loader=loader) for p in sorted(CASES_DIR.glob("*.yaml"))]
        return cls([d for d in docs if isinstance(d, dict) and d.get("status", "reviewed") == "reviewed"])


# -- synthetic cases --------------------------------------------------------------------------


def _num(rng: random.Random, low: float, high: float) -> float:
    """Log-uniform in [low, high], three significant digits."""
    return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")


def _fmt(value: float) -> str:
    return f"{value:g}"


def case_id(vocab: Vocabulary, seed: int, i: int) -> str:
    prefix = random.Random(f"{seed}-id-{i}").choice(vocab.id_prefixes)
    return f"{prefix}-syn{i:06d}"


def synth_case(vocab: Vocabulary, seed: int, i: int) -> dict[str, Any]:
    """Case number ``i``: the same dict whatever the size of the base being built."""
    rng = random.Random(f"{seed}-case-{i}")
    model = json.loads(json.dumps(rng.choice(vocab.models)))
    framework = json.loads(json.dumps(rng.choice(vocab.frameworks)))
    hardware = json.loads(json.dumps(rng.choice(vocab.hardware))) if vocab.hardware and rng.random() < 0.6 else {}
    gpu = hardware.get("accelerator") or rng.choice(vocab.gpus)
    gpus = rng.choice([1, 2, 4, 8, 8, 16])
    if hardware.get("accelerator"):
        hardware["count"] = gpus
    config = dict(rng.choice(vocab.configs))
    if rng.random() < 0.4:
        config["learning_rate"] = rng.choice([1e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4])
    zh = rng.random() < 0.4
    start, stuck = _num(rng, 0.5, 90.0), _num(rng, 0.05, 12.0)
    step, later = rng.randint(10, 5000), rng.randint(5001, 60000)
    name, fw = model["name"], framework["name"]
    fw_version = f" {framework['version']}" if framework.get("version") else ""
    a, b = rng.sample(vocab.clauses, 2)
    if zh:
        title = f"{name} 用 {fw}{fw_version} 训练：{rng.choice(vocab.zh_clauses)}，loss {_fmt(start)} 降到 {_fmt(stuck)} 就不动了"
        symptom = " ".join(
            [*rng.sample(vocab.phrasing_zh, 2), rng.choice(vocab.symptom_en),
             f"第 {step} 步 loss 是 {_fmt(start)}，到第 {later} 步仍停在 {_fmt(stuck)} 左右（{gpus} 张 {gpu}）。"]
        )
    else:
        title = f"{name} with {fw}{fw_version}: {a}; {b} (loss {_fmt(start)} -> {_fmt(stuck)})"
        symptom = " ".join(
            [*rng.sample(vocab.symptom_en, rng.randint(2, 3)),
             f"Loss was {_fmt(start)} at step {step} and still about {_fmt(stuck)} at step {later} on {gpus}x {gpu}."]
        )
    phrasing = {
        "en": " ".join([f"{name} on {gpus}x {gpu} with {fw}{fw_version}.", *rng.sample(vocab.phrasing_en, 2),
                        f"Loss {_fmt(start)} at step {step}, {_fmt(stuck)} by step {later}."]),
        "zh": "".join([f"{fw}{fw_version} 训练 {name}，{gpus} 张 {gpu}。", *rng.sample(vocab.phrasing_zh, 2),
                       f"loss 在第 {step} 步是 {_fmt(start)}，到 {later} 步还是 {_fmt(stuck)}。"]),
    }
    if vocab.queries:
        phrasing["queries"] = [*rng.sample(vocab.queries, rng.randint(1, 3)),
                               rng.choice([f"{name} loss {_fmt(start)} stuck at {_fmt(stuck)}", f"{fw} {name} loss 卡在 {_fmt(stuck)}"])]
    fixes, seen = [], set()
    for fix in rng.sample(vocab.fixes, rng.randint(1, 3)):
        if fix["action"] not in seen:
            seen.add(fix["action"])
            fixes.append(dict(fix))
    tags = list(dict.fromkeys(rng.sample(vocab.tags, rng.randint(2, 6))))
    observations = [
        {"metric": "loss", "value": start, "when": "initial", "step": step, "context": "symptom"},
        {"metric": "loss", "value": stuck, "when": "plateau", "step": later, "context": "symptom"},
    ]
    if rng.random() < 0.3:
        observations.append({"metric": rng.choice(vocab.metrics), "value": _num(rng, 0.01, 100.0), "when": "other", "context": "symptom"})
    repo = rng.choice(vocab.repos)
    rng.randint(1, 12000)  # the issue number once drawn here: still drawn, so the draws after it are unchanged
    # One thread per case, beyond any real issue number: ingest refuses a second case of a thread.
    sources = [f"https://github.com/{repo}/issues/{10_000_000 + i}"]
    if rng.random() < 0.3:
        sources.append(f"{rng.getrandbits(64):016x}.txt")
    doc = {
        "id": case_id(vocab, seed, i),
        "title": title,
        "status": "reviewed",
        "language": "zh" if zh else "en",
        "phase": rng.choice(vocab.phases),
        "symptom": symptom,
        "user_phrasing": phrasing,
        "model": model,
        "framework": framework,
        "hardware": hardware,
        "config": config,
        "observations": observations,
        "causes": rng.sample(vocab.causes, rng.randint(1, 3)),
        "fixes": fixes,
        "tags": tags,
        "related": [case_id(vocab, seed, rng.randrange(i))] if i and rng.random() < 0.25 else [],
        "sources": sources,
    }
    return doc


def generate(vocab: Vocabulary, seed: int, first: int, count: int) -> list[dict[str, Any]]:
    """Cases ``first .. first+count-1``, each validated as kb.models.Case."""
    from kb.models import Case

    return [Case.model_validate(synth_case(vocab, seed, i)).to_document() for i in range(first, first + count)]


def write_yaml(documents: list[dict[str, Any]], directory: Path) -> None:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    directory.mkdir(parents=True, exist_ok=True)
    for doc in documents:
        text = yaml.dump(doc, Dumper=dumper, allow_unicode=True, sort_keys=False, width=100000)
        (directory / f"{doc['id']}.yaml").write_text(text, encoding="utf-8")


def peer_text(doc: dict[str, Any]) -> str:
    """What the BM25 peers index: the case fields kbq's lexical stage reads, as one text."""
    try:
        from kb.index import case_fields

        return "\n".join(case_fields(doc).values())
    except ImportError:
        pass
    phrasing = doc.get("user_phrasing") or {}
    model, framework = doc["model"], doc["framework"]
    setup = [model["name"], model.get("version", ""), model.get("size", ""), framework["name"], framework.get("version", ""),
             *framework.get("libraries", {}), *(f"{k} {v}" for k, v in doc.get("config", {}).items()),
             str((doc.get("hardware") or {}).get("accelerator") or "")]
    return "\n".join([doc["title"], doc["symptom"], phrasing.get("en", ""), phrasing.get("zh", ""), " ".join(doc.get("tags", [])),
                      " ".join(s for s in setup if s), *doc["causes"], *(f["action"] for f in doc["fixes"])])


def semantic_text_count(documents: list[dict[str, Any]]) -> tuple[int, int]:
    """(texts, distinct texts) the case vectors average (kb.index.semantic_texts)."""
    from kb.index import semantic_texts

    texts = [t for d in documents for t in semantic_texts(d)]
    return len(texts), len(set(texts))


# -- queries ----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _pasted_issue(rng: random.Random, doc: dict[str, Any]) -> str:
    """A GitHub-issue-shaped paste: system info, the report, a few log lines, a traceback tail."""
    fw, hw = doc["framework"], doc.get("hardware") or {}
    losses = [o["value"] for o in doc.get("observations", []) if o["metric"] == "loss"] or [2.3]
    log = [
        "{" + f"'loss': {v:.4f}, 'grad_norm': {rng.uniform(0.1, 40):.3f}, 'learning_rate': {rng.choice(['1e-05', '2e-05', '5e-05'])}, 'epoch': {rng.uniform(0, 3):.2f}" + "}"
        for v in sorted(losses, reverse=True) * 2
    ]
    report = (doc.get("user_phrasing") or {}).get(rng.choice(["en", "zh"])) or doc["symptom"]
    return "\n".join([
        "### System Info",
        f"- `{fw['name']}` version: {fw.get('version', 'main')}",
        "- Platform: Linux-5.15.0-105-generic-x86_64-with-glibc2.35",
        "- Python version: 3.10.14",
        f"- PyTorch version: {fw.get('libraries', {}).get('torch', '2.3.0')} (GPU)",
        f"- GPU type: {hw.get('accelerator', 'NVIDIA A100-SXM4-80GB')}",
        "",
        "### Reproduction",
        report,
        "```",
        *log,
        "```",
        "### Expected behavior",
        "The loss should keep going down like with the other model.",
    ])


def build_queries(vocab_docs: list[dict[str, Any]], self_cases: list[dict[str, Any]], total: int, seed: int) -> list[dict[str, Any]]:
    """About ``total`` queries: English, Chinese, pasted multi-line, and ``self`` ones paraphrasing
    synthetic cases (the expected id is known: a sanity check of the ranking at scale)."""
    rng = random.Random(f"{seed}-queries")
    rows = [r for path in QUERY_FILES for r in _read_jsonl(path)]
    seen: set[str] = set()
    english, chinese, pasted = [], [], []
    for row in rows:
        text = row["query"].strip()
        if not text or text in seen:
            continue
        seen.add(text)
        if "\n" in text:
            pasted.append(text)
        elif CJK.search(text):
            chinese.append(text)
        else:
            english.append(text)
    if not english:  # no eval files next to the checkout: the bundled phrasings stand in
        english = [d["user_phrasing"]["en"] for d in vocab_docs if d.get("user_phrasing")]
        chinese = [d["user_phrasing"]["zh"] for d in vocab_docs if d.get("user_phrasing")]
    n_self = min(len(self_cases), total // 5)
    n_paste = total // 10
    n_lang = (total - n_self - n_paste) // 2
    queries = [{"kind": "en", "text": t} for t in rng.sample(english, min(n_lang, len(english)))]
    queries += [{"kind": "zh", "text": t} for t in rng.sample(chinese, min(n_lang, len(chinese)))]
    pasted = rng.sample(pasted, min(n_paste // 2, len(pasted)))
    pasted += [_pasted_issue(rng, rng.choice(vocab_docs)) for _ in range(n_paste - len(pasted))]
    queries += [{"kind": "paste", "text": t[:8000]} for t in pasted]
    for j, doc in enumerate(self_cases[:n_self]):
        lang = "en" if j % 2 == 0 else "zh"
        queries.append({"kind": "self", "text": doc["user_phrasing"][lang], "expected": doc["id"]})
    rng.shuffle(queries)
    return queries


# -- measuring helpers --------------------------------------------------------------------------


def memory_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process, and VmRSS split into RssAnon (the process's own
    memory) and RssFile (pages of mapped files: the index, reclaimable page cache), in MB
    (ru_maxrss where /proc is missing)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"VmRSS": peak, "VmHWM": peak}
    return out


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def vector_cache_bytes(home: Path) -> int:
    """Size of the case-embedding cache: under the cache directory, or the data directory in older layouts."""
    return dir_bytes(home / "cache" / "vectors") + dir_bytes(home / "vectors")


def latency_summary(times: list[float], kinds: list[str]) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {}
    for t, k in zip(times, kinds):
        by_kind.setdefault(k, []).append(t)
    return {
        "n": len(times),
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "mean_ms": statistics.fmean(times) * 1000 if times else float("nan"),
        "p50_by_kind_ms": {k: percentile(v, 50) * 1000 for k, v in sorted(by_kind.items())},
    }


def recall(ranked: list[list[str]], queries: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank of the expected case for the ``self`` queries: recall@1 and @5."""
    ranks = [ids.index(q["expected"]) + 1 if q["expected"] in ids else None for ids, q in zip(ranked, queries) if q.get("expected")]
    if not ranks:
        return {"n": 0}
    return {"n": len(ranks), "r1": sum(r == 1 for r in ranks) / len(ranks), "r5": sum(r is not None and r <= 5 for r in ranks) / len(ranks)}


# -- workers (each in its own process) ------------------------------------------------------------


def worker_build(args: dict[str, Any]) -> dict[str, Any]:
    """KnowledgeBase.index() on an ingested database: what the first query after a change pays."""
    import kb.semantic as semantic

    # Wall time of the embedding step (kb.semantic.encode_all, which may fan out to worker
    # processes), and the texts it embedded.
    spent = {"seconds": 0.0, "texts": 0, "calls": 0}
    original = semantic.encode_all

    def timed_encode_all(encoder, texts, *rest, **options):
        start = time.perf_counter()
        try:
            return original(encoder, texts, *rest, **options)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["texts"] += len(texts)
            spent["calls"] += 1

    semantic.encode_all = timed_encode_all
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(db=args["db"])
    start = time.perf_counter()
    index = kb.index()
    seconds = time.perf_counter() - start
    vectors = vector_cache_bytes(kb.home)
    return {
        "seconds": seconds,
        "cases": len(index),
        "semantic": index.semantic_model,
        "embed_seconds": spent["seconds"],
        "embedded_texts": spent["texts"],
        "index_dir": str(index.directory),
        "index_bytes": dir_bytes(index.directory),
        "vector_cache_bytes": vectors,
        "memory": memory_mb(),
    }


def worker_prewarm(args: dict[str, Any]) -> dict[str, Any]:
    """Write the encoder's ready-to-map copy into the data directory (a one-off per home)."""
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(db=args["db"])
    start = time.perf_counter()
    encoder = kb.encoder()
    if encoder is not None:
        encoder.encode(["warm up"])
    return {"seconds": time.perf_counter() - start}


def worker_warm(args: dict[str, Any]) -> dict[str, Any]:
    """Warm kbq queries in one process: search plus its JSON document (features, explanations)."""
    from kb.service import KnowledgeBase

    queries = json.loads(Path(args["queries"]).read_text(encoding="utf-8"))
    before = memory_mb()
    kb = KnowledgeBase(db=args["db"])
    start = time.perf_counter()
    index = kb.index()
    load = time.perf_counter() - start
    start = time.perf_counter()
    kb.search(COLD_QUERY, k=5).to_json()  # first query: loads the encoder, touches the maps
    first = time.perf_counter() - start
    times, kinds, ranked, errors, empty = [], [], [], [], 0
    abstained: dict[str, int] = {}
    for q in queries:
        start = time.perf_counter()
        try:
            doc = kb.search(q["text"], k=5).to_json()
        except Exception as exc:  # noqa: BLE001 - a bench reports errors, it does not stop on them
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            ranked.append([])
            continue
        times.append(time.perf_counter() - start)
        kinds.append(q["kind"])
        ids = [r["id"] for r in doc["results"]]
        ranked.append(ids)
        abstained[q["kind"]] = abstained.get(q["kind"], 0) + bool(doc["abstained"])
        empty += not ids
    return {
        "load_seconds": load,
        "first_query_seconds": first,
        "latency": latency_summary(times, kinds),
        "recall": recall(ranked, queries),
        "abstained": abstained,
        "empty": empty,
        "errors": len(errors),
        "error_samples": errors[:3],
        "index_dir": str(kb._index.directory if kb._index is not None else index.directory),
        "memory_before": before,
        "memory": memory_mb(),
    }


def _stopwords():
    from kb.index import STOPWORDS_FILE, load_yaml_data
    from kb.tokenize import Stopwords

    raw = load_yaml_data(STOPWORDS_FILE) or {}
    return Stopwords.from_lists([str(w) for w in raw.get("en", [])], [str(w) for w in raw.get("zh", [])])


def _plain_tokens(text: str, stopwords) -> list[str]:
    """English words and Chinese bigrams as kbq's tokenizer makes them, without the lexicon."""
    from kb.lexicon import normalize
    from kb.tokenize import cjk_tokens, word_tokens

    norm = normalize(text)
    return word_tokens(norm, stopwords) + cjk_tokens(norm, stopwords)


def _corpus(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def worker_bm25s_build(args: dict[str, Any]) -> dict[str, Any]:
    import bm25s

    corpus, stopwords = _corpus(args["corpus"]), _stopwords()
    start = time.perf_counter()
    tokens = [_plain_tokens(row["text"], stopwords) for row in corpus]
    tokenized = time.perf_counter() - start
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    seconds = time.perf_counter() - start
    retriever.save(args["dir"], show_progress=False)
    Path(args["dir"], "ids.json").write_text(json.dumps([row["id"] for row in corpus]), encoding="utf-8")
    return {"seconds": seconds, "tokenize_seconds": tokenized, "bytes": dir_bytes(Path(args["dir"])), "memory": memory_mb()}


def worker_bm25s_query(args: dict[str, Any]) -> dict[str, Any]:
    import bm25s

    queries = json.loads(Path(args["queries"]).read_text(encoding="utf-8"))
    stopwords = _stopwords()
    start = time.perf_counter()
    retriever = bm25s.BM25.load(args["dir"], mmap=True, show_progress=False)
    ids = json.loads(Path(args["dir"], "ids.json").read_text(encoding="utf-8"))
    load = time.perf_counter() - start
    vocab = retriever.vocab_dict
    k = min(5, len(ids))

    def run(text: str) -> list[str]:
        tokens = [t for t in _plain_tokens(text, stopwords) if t in vocab]
        if not tokens:
            return []
        docs, scores = retriever.retrieve([tokens], k=k, show_progress=False, n_threads=1)
        return [ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0]

    times, kinds, ranked = _timed_queries(run, queries)
    return {"load_seconds": load, "latency": latency_summary(times, kinds), "recall": recall(ranked, queries), "memory": memory_mb()}


def _timed_queries(run, queries: list[dict[str, Any]]) -> tuple[list[float], list[str], list[list[str]]]:
    """Run every query once after one warm-up query: per-query seconds, kinds and rankings."""
    run(COLD_QUERY)
    times, kinds, ranked = [], [], []
    for q in queries:
        start = time.perf_counter()
        ranked.append(run(q["text"]))
        times.append(time.perf_counter() - start)
        kinds.append(q["kind"])
    return times, kinds, ranked


def _fts_match(text: str) -> str | None:
    terms = sorted(set(re.findall(r"\w+", text.lower())))
    return " OR ".join('"' + t + '"' for t in terms) if terms else None


def worker_fts_build(args: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    corpus = _corpus(args["corpus"])
    start = time.perf_counter()
    conn = sqlite3.connect(args["db"])
    conn.execute("CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, body)")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(row["id"], row["text"]) for row in corpus])
    conn.commit()
    conn.close()
    return {"seconds": time.perf_counter() - start, "bytes": dir_bytes(Path(args["db"]))}


def worker_fts_query(args: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    queries = json.loads(Path(args["queries"]).read_text(encoding="utf-8"))
    conn = sqlite3.connect(args["db"])
    sql = "SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 5"

    def run(text: str) -> list[str]:
        match = _fts_match(text)
        return [] if match is None else [r[0] for r in conn.execute(sql, (match,)).fetchall()]

    times, kinds, ranked = _timed_queries(run, queries)
    return {"latency": latency_summary(times, kinds), "recall": recall(ranked, queries), "memory": memory_mb()}


WORKERS = {
    "build": worker_build,
    "prewarm": worker_prewarm,
    "warm": worker_warm,
    "bm25s-build": worker_bm25s_build,
    "bm25s-query": worker_bm25s_query,
    "fts-build": worker_fts_build,
    "fts-query": worker_fts_query,
}


# -- the driver -----------------------------------------------------------------------------------


class Runner:
    """Starts workers and commands with the bench's environment, each under a timeout."""

    def __init__(self, home: Path, semantic: bool, blas_threads: int | None = None):
        # Data, caches (model copy, case embeddings) and HOME itself all point into the bench's
        # directory: nothing reads or writes the user's own kbq files, and no size reuses the
        # embeddings of another.
        self.env = {**os.environ, "KBQ_HOME": str(home), "KBQ_CACHE_DIR": str(home / "cache"),
                    "XDG_DATA_HOME": str(home / "xdg-data"), "XDG_CACHE_HOME": str(home / "xdg-cache"),
                    "HOME": str(home / "user"), "KBQ_SEMANTIC": "1" if semantic else "0",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.env.pop("KBQ_DB", None)
        (home / "user").mkdir(parents=True, exist_ok=True)
        if blas_threads:
            self.env.update(OPENBLAS_NUM_THREADS=str(blas_threads), OMP_NUM_THREADS=str(blas_threads), MKL_NUM_THREADS=str(blas_threads))

    def worker(self, name: str, args: dict[str, Any], timeout: float, semantic: bool | None = None) -> dict[str, Any]:
        """What worker ``name`` printed, plus the wall time and peak RSS of its process."""
        measured = self.measure([sys.executable, __file__, "--worker", name, json.dumps(args)], timeout, semantic)
        lines = [line for line in measured.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if not lines:
            raise RuntimeError(f"worker {name} printed no result: " + " | ".join(measured.stderr.strip().splitlines()[-5:]))
        result = json.loads(lines[-1][len(RESULT_MARK):])
        result.update(process_seconds=measured.seconds, peak_rss_mb=measured.peak_rss_mb)
        return result

    def command(self, cmd: list[str], timeout: float, semantic: bool | None = None) -> tuple[float, str]:
        measured = self.measure(cmd, timeout, semantic)
        return measured.seconds, measured.stdout

    def measure(self, cmd: list[str], timeout: float, semantic: bool | None = None) -> Measured:
        """Wall time and peak RSS of ``cmd`` in its own process; RuntimeError if it fails."""
        env = dict(self.env)
        if semantic is not None:
            env["KBQ_SEMANTIC"] = "1" if semantic else "0"
        measured = measure_process(cmd, env, timeout)
        if measured.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}... failed (exit {measured.returncode}): {measured.stderr.strip()[-400:]}")
        return measured


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def measure_process(cmd: list[str], env: dict[str, str], timeout: float) -> Measured:
    """Run ``cmd``; its wall time and its own peak RSS. wait4 gives the rusage of this one
    child (RUSAGE_CHILDREN would be the largest of every child waited for so far)."""
    import threading

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        killer = threading.Timer(timeout, kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        if timed_out.is_set():
            raise subprocess.TimeoutExpired(cmd, timeout)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux
        return Measured(seconds, usage.ru_maxrss / 1024, proc.returncode,
                        out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def kbq_command() -> list[str]:
    """The installed ``kbq`` script next to this interpreter (imports this checkout via PYTHONPATH)."""
    script = Path(sys.executable).with_name("kbq")
    if script.exists():
        return [str(script)]
    found = shutil.which("kbq")
    return [found] if found else [sys.executable, "-c", "from cli.main import run; run()"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def step(results: dict[str, Any], key: str, fn, *a, **kw):
    """Run one measurement; a failure is recorded and the run goes on."""
    try:
        value = fn(*a, **kw)
    except Exception as exc:  # noqa: BLE001
        message = f"{type(exc).__name__}: {exc}"
        results.setdefault("errors", {})[key] = message[:600]
        log(f"  {key}: FAILED {message[:300]}")
        return None
    results[key] = value
    return value


def run_size(n: int, vocab: Vocabulary, vocab_docs: list[dict[str, Any]], args, work: Path) -> dict[str, Any]:
    semantic = n <= args.semantic_max_cases
    base = work / f"n{n}"
    home, db, cases_dir, extra_dir = base / "home", base / "kbq.db", base / "cases", base / "extra"
    base.mkdir(parents=True)
    out: dict[str, Any] = {"cases": n, "semantic": semantic, "add": args.add}
    runner = Runner(home, semantic, args.blas_threads)
    out["load_start"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    kbq = kbq_command()
    # Generous per-step bounds, scaled by the size (up to 6 texts per case at 150 ms each).
    t_small, t_lex, t_full = 600 + n * 0.02, 900 + n * 0.05, 900 + n * 6 * 0.15

    log(f"n={n}: generating cases")
    start = time.perf_counter()
    docs = generate(vocab, args.seed, 0, n)
    write_yaml(docs, cases_dir)
    with open(base / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"id": doc["id"], "text": peer_text(doc)}, ensure_ascii=False) + "\n")
    out["texts"], out["distinct_texts"] = semantic_text_count(docs)
    out["zh_share"] = sum(d["language"] == "zh" for d in docs) / n
    queries = build_queries(vocab_docs, docs[: min(n, 1000)][:: max(1, min(n, 1000) // 40)], args.queries, args.seed)
    queries_file = base / "queries.json"
    queries_file.write_text(json.dumps(queries, ensure_ascii=False), encoding="utf-8")
    out["query_kinds"] = {k: sum(q["kind"] == k for q in queries) for k in ("en", "zh", "paste", "self")}
    log(f"n={n}: generated and written in {time.perf_counter() - start:.1f}s ({out['distinct_texts']}/{out['texts']} distinct texts to embed)")
    del docs

    log(f"n={n}: kbq ingest")
    ingested = step(out, "ingest", runner.measure, [*kbq, "ingest", str(cases_dir), "--db", str(db)], t_lex)
    if ingested is not None:
        out["ingest"] = {"seconds": ingested.seconds, "peak_rss_mb": ingested.peak_rss_mb, "message": ingested.stdout.strip()}
        if f"{n} added" not in ingested.stdout:
            out.setdefault("errors", {})["ingest-count"] = f"expected {n} added, got: {ingested.stdout.strip()}"
    out["db_bytes"] = dir_bytes(db)

    log(f"n={n}: lexical index build")
    step(out, "lexical_build", runner.worker, "build", {"db": str(db)}, t_lex, semantic=False)
    if semantic:
        log(f"n={n}: full index build (embedding ~{out['distinct_texts']} texts)")
        step(out, "prewarm", runner.worker, "prewarm", {"db": str(db)}, t_small, semantic=True)
        step(out, "full_build", runner.worker, "build", {"db": str(db)}, t_full, semantic=True)

    log(f"n={n}: cold kbq processes")
    cold = []
    for _ in range(args.cold_runs):
        sample = step(out, "cold_sample", runner.command, [*kbq, "--db", str(db), COLD_QUERY], t_small)
        if sample is None:
            break
        cold.append(sample[0])
    out.pop("cold_sample", None)
    if cold:
        out["cold"] = {"median_s": statistics.median(cold), "min_s": min(cold), "runs": len(cold)}

    log(f"n={n}: warm queries ({len(queries)})")
    step(out, "warm", runner.worker, "warm", {"db": str(db), "queries": str(queries_file)}, t_lex + 30 * len(queries))
    built = (out.get("full_build") or out.get("lexical_build") or {}).get("index_dir")
    if out.get("warm") and built and out["warm"]["index_dir"] != built:
        out.setdefault("errors", {})["warm-index"] = "the warm process rebuilt the index (kb data or code changed during the run?)"

    if not args.no_peers:
        log(f"n={n}: bm25s")
        if step(out, "bm25s_build", runner.worker, "bm25s-build", {"corpus": str(base / "corpus.jsonl"), "dir": str(base / "bm25s")}, t_lex):
            step(out, "bm25s_query", runner.worker, "bm25s-query", {"dir": str(base / "bm25s"), "queries": str(queries_file)}, t_lex)
        log(f"n={n}: SQLite FTS5")
        fts = base / "fts.db"
        if step(out, "fts_build", runner.worker, "fts-build", {"corpus": str(base / "corpus.jsonl"), "db": str(fts)}, t_lex):
            step(out, "fts_query", runner.worker, "fts-query", {"db": str(fts), "queries": str(queries_file)}, t_lex)
            samples = []
            for _ in range(args.cold_runs):
                sample = step(out, "fts_cold_sample", runner.command, [sys.executable, "-c", FTS_COLD_SCRIPT, str(fts), COLD_QUERY], t_small)
                if sample is None:
                    break
                samples.append(sample[0])
            out.pop("fts_cold_sample", None)
            if samples:
                out["fts_cold"] = {"median_s": statistics.median(samples), "runs": len(samples)}

    log(f"n={n}: +{args.add} cases, ingest and rebuild")
    extra = generate(vocab, args.seed, n, args.add)
    write_yaml(extra, extra_dir)
    out["add_texts"] = semantic_text_count(extra)
    added = step(out, "add_ingest", runner.command, [*kbq, "ingest", str(extra_dir), "--db", str(db)], t_small)
    if added is not None:
        out["add_ingest"] = {"seconds": added[0], "message": added[1].strip()}
    step(out, "rebuild", runner.worker, "build", {"db": str(db)}, t_full if semantic else t_lex)
    if out.get("rebuild") and semantic and out["rebuild"]["embedded_texts"] > 2 * out["add_texts"][1] + 10:
        out.setdefault("errors", {})["rebuild-cache"] = (
            f"rebuild embedded {out['rebuild']['embedded_texts']} texts for {args.add} new cases: the vector cache missed")
    if out.get("rebuild") and out["rebuild"]["cases"] != n + args.add:
        out.setdefault("errors", {})["rebuild-count"] = f"index has {out['rebuild']['cases']} cases, expected {n + args.add}"
    out["vector_cache_bytes"] = vector_cache_bytes(home)
    out["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return out


# -- the table ------------------------------------------------------------------------------------


def _get(result: dict[str, Any], *path, default=None):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


def _s(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value) -> str:
    return "-" if value is None else (f"{value * 1000:.0f}" if value * 1000 >= 10 else f"{value * 1000:.1f}")


def _msv(value) -> str:
    return "-" if value is None else (f"{value:.0f}" if value >= 10 else f"{value:.2f}")


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _pct(rec) -> str:
    if not rec or not rec.get("n"):
        return "-"
    return f"{rec['r1']:.2f} / {rec['r5']:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn) -> None:
        rows.append((label, [fn(r) for r in results]))

    def per_text(r):
        full = r.get("full_build")
        if not full or not full.get("embedded_texts"):
            return "-"
        return f"{full['embed_seconds']:.1f} ({full['embed_seconds'] / full['embedded_texts'] * 1000:.1f} ms/text)"

    def rebuild(r):
        rb = r.get("rebuild")
        if not rb:
            return "-"
        return f"{rb['seconds']:.1f} ({rb['embedded_texts']})" if r["semantic"] else f"{rb['seconds']:.1f} (lexical)"

    def kinds(latency):
        return " / ".join(_msv(latency["p50_by_kind_ms"].get(k)) for k in ("en", "zh", "paste", "self")) if latency else "-"

    add("cases", lambda r: str(r["cases"]))
    add("semantic stage", lambda r: "on" if r["semantic"] else "off (KBQ_SEMANTIC=0)")
    add("1-min load average, start / end", lambda r: f"{_s(r.get('load_start'))} / {_s(r.get('load_end'))}")
    add("texts to embed (distinct)", lambda r: f"{r['texts']} ({r['distinct_texts']})")
    add("kbq ingest DIR --db X, s (process)", lambda r: _s(_get(r, "ingest", "seconds")))
    add("  its peak RSS, MB", lambda r: _s(_get(r, "ingest", "peak_rss_mb"), 0))
    add("index build, lexical only, s", lambda r: _s(_get(r, "lexical_build", "seconds")))
    add("index build, full, s", lambda r: _s(_get(r, "full_build", "seconds")) if r["semantic"] else "skipped")
    add("  of which embedding, s", per_text)
    more = f"+{results[0]['add']} cases"
    add(f"{more}: ingest, s", lambda r: _s(_get(r, "add_ingest", "seconds")))
    add(f"{more}: index rebuild, s (texts embedded)", rebuild)
    add("build process VmHWM, MB (lexical / full)", lambda r: f"{_s(_get(r, 'lexical_build', 'memory', 'VmHWM'), 0)} / {_s(_get(r, 'full_build', 'memory', 'VmHWM'), 0)}")
    add("index on disk, MB (lexical / full)", lambda r: f"{_mb(_get(r, 'lexical_build', 'index_bytes'))} / {_mb(_get(r, 'full_build', 'index_bytes'))}")
    add("vector cache / database, MB", lambda r: f"{_mb(r.get('vector_cache_bytes'))} / {_mb(r.get('db_bytes'))}")
    add(f'cold kbq --db X "{COLD_QUERY}", ms', lambda r: f"{_ms(_get(r, 'cold', 'median_s'))} (min {_ms(_get(r, 'cold', 'min_s'))})")
    add("warm kbq p50 / p99, ms", lambda r: f"{_msv(_get(r, 'warm', 'latency', 'p50_ms'))} / {_msv(_get(r, 'warm', 'latency', 'p99_ms'))}")
    add("  p50 en / zh / paste / self, ms", lambda r: kinds(_get(r, "warm", "latency")))
    add("  index load / first query, ms", lambda r: f"{_ms(_get(r, 'warm', 'load_seconds'))} / {_ms(_get(r, 'warm', 'first_query_seconds'))}")
    add("warm kbq RSS / VmHWM, MB", lambda r: f"{_s(_get(r, 'warm', 'memory', 'VmRSS'), 0)} / {_s(_get(r, 'warm', 'memory', 'VmHWM'), 0)}")
    add("  of which anonymous / mapped files, MB", lambda r: f"{_s(_get(r, 'warm', 'memory', 'RssAnon'), 0)} / {_s(_get(r, 'warm', 'memory', 'RssFile'), 0)}")
    add("kbq self-reports R@1 / R@5", lambda r: _pct(_get(r, "warm", "recall")))
    add("kbq abstained: all / self-reports", lambda r: f"{sum(_get(r, 'warm', 'abstained', default={}).values())} / {_get(r, 'warm', 'abstained', 'self', default=0)}" if r.get("warm") else "-")
    add("kbq errors (of queries)", lambda r: f"{_get(r, 'warm', 'errors', default='-')} ({_get(r, 'warm', 'latency', 'n', default='-')})")
    add("bm25s build, s", lambda r: _s(_get(r, "bm25s_build", "seconds"), 2))
    add("bm25s warm p50 / p99, ms", lambda r: f"{_msv(_get(r, 'bm25s_query', 'latency', 'p50_ms'))} / {_msv(_get(r, 'bm25s_query', 'latency', 'p99_ms'))}")
    add("bm25s RSS / VmHWM, MB (query process)", lambda r: f"{_s(_get(r, 'bm25s_query', 'memory', 'VmRSS'), 0)} / {_s(_get(r, 'bm25s_query', 'memory', 'VmHWM'), 0)}")
    add("bm25s self-reports R@1 / R@5", lambda r: _pct(_get(r, "bm25s_query", "recall")))
    add("FTS5 build, s", lambda r: _s(_get(r, "fts_build", "seconds"), 2))
    add("FTS5 warm p50 / p99, ms", lambda r: f"{_msv(_get(r, 'fts_query', 'latency', 'p50_ms'))} / {_msv(_get(r, 'fts_query', 'latency', 'p99_ms'))}")
    add("FTS5 cold process, ms", lambda r: _ms(_get(r, "fts_cold", "median_s")))
    add("FTS5 self-reports R@1 / R@5", lambda r: _pct(_get(r, "fts_query", "recall")))

    width = max(len(label) for label, _ in rows)
    cols = [max(len(str(r["cases"])), *(len(v[i]) for _, v in rows)) for i, r in enumerate(results)]
    lines = [f"{'':<{width}}  " + "  ".join(f"{'N=' + str(r['cases']):>{c}}" for r, c in zip(results, cols))]
    lines += [f"{label:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(values, cols)) for label, values in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--queries", type=int, default=200, help="warm queries per size (default 200)")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--add", type=int, default=100, help="cases added before the rebuild (default 100)")
    parser.add_argument("--semantic-max-cases", type=int, default=10**9,
                        help="sizes above this run lexical only (KBQ_SEMANTIC=0 throughout)")
    parser.add_argument("--no-peers", action="store_true", help="skip bm25s and FTS5")
    parser.add_argument("--blas-threads", type=int, help="set OPENBLAS/OMP_NUM_THREADS for the kbq processes (default: one, as the kbq command sets)")
    parser.add_argument("--json-out", type=Path, help="also write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (printed at the end)")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        name, payload = args.worker
        # A worker stands for a kbq process: the same process set-up as the kbq command (one
        # BLAS thread unless --blas-threads said otherwise), and freed arrays kept in the heap
        # as kbq does once it loads a large index; the peers' workers get the same.
        sys.path.insert(0, str(ROOT))
        from kb.runtime import keep_freed_memory, prefer_one_blas_thread

        prefer_one_blas_thread()
        keep_freed_memory()
        result = WORKERS[name](json.loads(payload))
        print(RESULT_MARK + json.dumps(result), flush=True)
        return

    if any(n < 1 for n in args.sizes) or not 1 <= args.queries <= 5000 or not 1 <= args.cold_runs <= 50 or not 1 <= args.add <= 10000:
        parser.error("sizes must be positive; --queries 1..5000, --cold-runs 1..50, --add 1..10000")
    sys.path.insert(0, str(ROOT))
    vocab = Vocabulary.bundled()
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    vocab_docs = [yaml.load(p.read_text(encoding="utf-8"), Loader=loader) for p in sorted(CASES_DIR.glob("*.yaml"))]
    work = Path(tempfile.mkdtemp(prefix="kbq-scale-"))
    log(f"work directory {work}; kbq from {ROOT}; python {sys.executable}")
    results = []
    try:
        for n in sorted(set(args.sizes)):
            start = time.perf_counter()
            result = run_size(n, vocab, vocab_docs, args, work)
            result["total_seconds"] = time.perf_counter() - start
            results.append(result)
            log(f"n={n}: done in {result['total_seconds']:.0f}s")
            full = result.get("full_build")
            if full and full.get("embedded_texts"):
                per = full["embed_seconds"] / full["embedded_texts"]
                for bigger in (m for m in args.sizes if m > n):
                    log(f"  projected embedding time at {bigger}: {per * result['texts'] / n * bigger / 60:.0f} min")
            if not args.keep:
                shutil.rmtree(work / f"n{n}", ignore_errors=True)
    finally:
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    if not results:
        return
    blas = f"BLAS threads {args.blas_threads}" if args.blas_threads else "one BLAS thread (as the kbq command)"
    print(f"kbq scale bench: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, seed {args.seed}, {blas}; "
          f"ingest = `kbq ingest DIR --db X` (YAML files, subprocess); builds = KnowledgeBase.index() in a new process")
    print(table(results))
    for r in results:
        for key, message in (r.get("errors") or {}).items():
            print(f"N={r['cases']} {key}: {message}")
        for key in ("warm",):
            for sample in _get(r, key, "error_samples", default=[]) or []:
                print(f"N={r['cases']} {key} error: {sample}")


if __name__ == "__main__":
    main()
