"""Real length data and the paper artifact's trace semantics.

The paper's figures came from its artifact (sosp-ae-39/sosp-ae-astra, `astra/benchmark/trace.py`, "TR"
below; line numbers from its identical copy `orca/benchmark/trace.py`). This module finds the data files,
reads them with clear errors, and reproduces TR's draws exactly: numpy's legacy global seeding is
`np.random.RandomState(seed)`, Python's `random.seed(seed)` is `random.Random(seed)`, so pagelab's trace
for (rate, duration, seed) is the artifact's, request for request (docs/workloads.md).

    python -m harness.datasets convert-pkl IN.pkl OUT.csv   # the artifact's .pkl of pairs -> CSV
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import pickle
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "PAGELAB_DATA"  # a data root holding sosp23_artifact/..., etalon/...
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

# The artifact's datasets/sharegpt_opt_text_completion_length.pkl written as CSV (input_len,output_len).
ARTIFACT_SHAREGPT = "sosp23_artifact/sharegpt_opt_text_completion_length.csv"
ARTIFACT_SHAREGPT_PKL = "datasets/sharegpt_opt_text_completion_length.pkl"
# Multi-turn ShareGPT statistics (Llama-2 tokenizer): one row per turn, the prompt holding the history.
ETALON_SHAREGPT = "etalon/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"

MAX_SEQ_LEN = 2048  # TR's max_seq_len: pairs with prompt + output < 2048 are kept
TIME_QUANTUM_MS = 10  # TR's time_quantum: one Poisson draw per 10 ms
CHAT_MAX_INPUT_LEN = MAX_SEQ_LEN // 2  # TR: the last 1024 history tokens
CHAT_MAX_OUTPUT_LEN = MAX_SEQ_LEN - CHAT_MAX_INPUT_LEN - 8  # TR: 1016


class WorkloadError(ValueError):
    """A malformed workload file, a missing data file or an impossible workload setting."""


# ---------------------------------------------------------------------- finding files
def find_data_file(relpath: str, data_path: str | Path | None = None, hint: str = "") -> Path:
    """The file `relpath` of the shared data: `data_path` itself (a file, or a data root holding
    relpath), else $PAGELAB_DATA/relpath, else <repo root>/../shared/data/relpath."""
    if data_path is not None:
        p = Path(data_path)
        candidates = [p / relpath if p.is_dir() else p]
    else:
        candidates = []
        if os.environ.get(DATA_ENV):
            candidates.append(Path(os.environ[DATA_ENV]) / relpath)
        candidates.append(DEFAULT_DATA_ROOT / relpath)
    for c in candidates:
        if c.is_file():
            return c
    searched = ", ".join(str(c) for c in candidates)
    raise WorkloadError(
        f"data file {relpath} not found (searched: {searched}). Fix: pass its path (data_path=...), or set "
        f"{DATA_ENV} to a data root holding {relpath}{hint}"
    )


SHAREGPT_HINT = (
    f". It is the paper artifact's {ARTIFACT_SHAREGPT_PKL} (sosp-ae-39/sosp-ae-astra) written as CSV: "
    "python -m harness.datasets convert-pkl IN.pkl OUT.csv. Or use dataset=sharegpt_synthetic "
    "(no file needed)"
)


@lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached while the file is unchanged), for a trace's metadata."""
    st = os.stat(path)
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------- reading files
def _read_int_rows(path: Path, columns: tuple[tuple[str, ...], ...]) -> np.ndarray:
    """A CSV's integer columns (each given by its accepted names) as an int64 array; errors name
    file:line and the field."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise WorkloadError(f"{path}:1: empty file, expected a header line")
        header = [h.strip() for h in header]
        idx = []
        for names in columns:
            found = [header.index(n) for n in names if n in header]
            if not found:
                raise WorkloadError(
                    f"{path}:1: no column {' or '.join(names)} (the header is {','.join(header)})"
                )
            idx.append(found[0])
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise WorkloadError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            values = []
            for i in idx:
                raw = row[i].strip()
                if not (raw.isascii() and raw.isdigit()):
                    raise WorkloadError(
                        f"{path}:{lineno}: field {header[i]!r}: expected a whole number of tokens >= 0, "
                        f"got {raw!r}"
                    )
                values.append(int(raw))
            rows.append(values)
    if not rows:
        raise WorkloadError(f"{path}: no rows after the header")
    return np.asarray(rows, dtype=np.int64)


@lru_cache(maxsize=4)
def _length_pairs(path: str, mtime_ns: int, size: int) -> np.ndarray:
    pairs = _read_int_rows(Path(path), (("input_len", "prompt_len"), ("output_len",)))
    pairs.setflags(write=False)
    return pairs


def read_length_pairs(path: str | Path) -> np.ndarray:
    """(prompt, output) length pairs of a CSV with columns input_len,output_len, in file order:
    int64 [num_pairs, 2], read-only (cached while the file is unchanged)."""
    st = os.stat(path)
    return _length_pairs(str(path), st.st_mtime_ns, st.st_size)


def read_conversations(path: str | Path) -> list[list[tuple[int, int]]]:
    """Conversations of a multi-turn statistics CSV (num_prefill_tokens,num_decode_tokens; one row per
    turn, the prefill holding the history so far), in file order. The file has no conversation ids: a
    row whose prefill is not longer than the row before starts a new conversation (within one, the
    history only grows)."""
    rows = _read_int_rows(Path(path), (("num_prefill_tokens",), ("num_decode_tokens",)))
    conversations: list[list[tuple[int, int]]] = []
    prev = None
    for p, o in rows.tolist():
        if prev is None or p <= prev:
            conversations.append([])
        conversations[-1].append((p, o))
        prev = p
    return conversations


# ---------------------------------------------------------------------- the artifact's semantics
def artifact_arrival_times(
    rate: float, duration_s: float, seed: int, time_quantum_ms: int = TIME_QUANTUM_MS
) -> np.ndarray:
    """TR:27-37: after np.random.seed(seed), one Poisson(rate x quantum) draw of arrivals for each 10 ms
    quantum of the trace; the requests of quantum i all arrive at i x 10 ms. Same float arithmetic as TR."""
    quantum_s = time_quantum_ms / 1000
    counts = np.random.RandomState(seed).poisson(
        lam=rate * quantum_s, size=int(duration_s * (1000 / time_quantum_ms))
    )
    return np.repeat(np.arange(len(counts)) * quantum_s, counts)


def artifact_sample(pairs: np.ndarray, num: int, seed: int, max_seq_len: int = MAX_SEQ_LEN) -> np.ndarray:
    """TR:44-64: keep the pairs with prompt + output < max_seq_len, take the first `num` in file order
    (cycling through them again if there are fewer), and shuffle with Python's random seeded by `seed`
    (TR seeds it at TR:27 and draws nothing else from it before the shuffle)."""
    kept = pairs[pairs[:, 0] + pairs[:, 1] < max_seq_len]
    if len(kept) == 0:
        raise WorkloadError(f"no length pair has prompt + output < {max_seq_len}")
    order = [i % len(kept) for i in range(num)]
    random.Random(seed).shuffle(order)
    return kept[np.asarray(order, dtype=np.int64)].reshape(num, 2)


def artifact_chat_requests(
    conversations: list[list[tuple[int, int]]],
    num: int,
    seed: int,
    new_conversation_prob: float,
) -> list[tuple[int, int, int, int]]:
    """The artifact's chatbot trace, `num` requests as (prompt, output, conversation, turn) in arrival
    order. TR:154-179: each turn's prompt is the last 1024 tokens of the history (min(history, 1024)),
    its output min(response, 1016); conversations are taken in file order until `num` turns, then
    shuffled. astra/benchmark/benchmark_chatbot.py:106-142: at each arrival, with probability
    new_conversation_prob (or when none is under way) an unstarted conversation chosen at random sends
    its first turn, else a random one under way sends its next. One Python random stream seeded by
    `seed` serves the shuffle and the choices, as in the artifact."""
    if not 0.0 <= new_conversation_prob <= 1.0:
        raise WorkloadError(f"new_conversation_prob must be in [0, 1], got {new_conversation_prob}")
    convs: list[list[tuple[int, int, int, int]]] = []
    total = 0
    for c, conv in enumerate(conversations):
        turns = []
        for t, (history, response) in enumerate(conv):
            if total == num:
                break
            turns.append((min(history, CHAT_MAX_INPUT_LEN), min(response, CHAT_MAX_OUTPUT_LEN), c, t))
            total += 1
        if turns:
            convs.append(turns)
        if total == num:
            break
    if total < num:
        raise WorkloadError(f"the trace needs {num} chat turns, the conversations hold only {total}")
    rng = random.Random(seed)
    rng.shuffle(convs)
    unstarted, started, next_turn = list(convs), [], []
    out = []
    for _ in range(num):
        if (rng.uniform(0, 1) < new_conversation_prob and unstarted) or not started:
            conv = unstarted.pop(rng.randint(0, len(unstarted) - 1))
            out.append(conv[0])
            if len(conv) > 1:
                started.append(conv)
                next_turn.append(1)
        else:
            i = rng.randint(0, len(started) - 1)
            out.append(started[i][next_turn[i]])
            next_turn[i] += 1
            if next_turn[i] == len(started[i]):
                del started[i], next_turn[i]
    return out


# ---------------------------------------------------------------------- the artifact's pickle
class _PairsUnpickler(pickle.Unpickler):
    """Loads only plain containers and numbers, and numpy arrays and scalars: any other global (a
    pickle's way to run code) is refused."""

    ALLOWED = {
        ("builtins", n) for n in ("list", "tuple", "int", "float", "dict", "set", "frozenset", "bytes")
    } | {
        ("_codecs", "encode"),  # numpy arrays pickled with protocol 2 carry their bytes through it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise WorkloadError(f"refusing to load {module}.{name} from a pickle (only pairs of lengths)")
        return super().find_class(module, name)


def _length(x, where: str) -> int:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0:
        return int(x)
    if isinstance(x, (list, tuple, np.ndarray)):
        return len(x)  # TR:47-52: a list of token ids counts as its length
    raise WorkloadError(f"{where}: expected a token count or a list of token ids, got {type(x).__name__}")


def convert_pkl(src: str | Path, dst: str | Path) -> int:
    """The artifact's pickle of (input, output) pairs (token counts or token-id lists) -> CSV with the
    header input_len,output_len, file order kept. Returns the number of pairs."""
    from harness.results import atomic_open

    with open(src, "rb") as f:
        try:
            data = _PairsUnpickler(io.BytesIO(f.read())).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise WorkloadError(f"{src}: not a readable pickle ({e})") from None
    rows = []
    for i, pair in enumerate(data):
        if len(pair) != 2:
            raise WorkloadError(f"{src}: entry {i}: expected an (input, output) pair, got {len(pair)} items")
        rows.append((_length(pair[0], f"{src}: entry {i}"), _length(pair[1], f"{src}: entry {i}")))
    with atomic_open(dst, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("input_len", "output_len"))
        w.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m harness.datasets", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "convert-pkl", help="the artifact's pickle of length pairs -> input_len,output_len CSV"
    )
    c.add_argument("src")
    c.add_argument("dst")
    args = ap.parse_args(argv)
    n = convert_pkl(args.src, args.dst)
    print(f"wrote {args.dst}: {n} pairs, sha256 {file_sha256(args.dst)}")


if __name__ == "__main__":
    main()
