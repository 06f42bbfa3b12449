"""A user's own files as Workloads: token counts without times (load_lengths_csv: Vidur's CSV schema;
load_sharegpt_json: vLLM's ShareGPT JSON), timestamped traces in pagelab's, the Azure LLM inference
traces' and BurstGPT's formats (load_trace_csv; docs/workloads.md, "Timestamped traces") and Mooncake
traces with block hash ids as segments (load_mooncake, "Mooncake traces"), their arrival times rescaled to
any mean rate (rescale_times). Errors name the file, the line and the field.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import re
from array import array
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

import numpy as np

from harness.datasets import WorkloadError
from harness.workload import Request, Workload, data_meta, mean_rate, vllm_filter

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- a user's files
def _fail(path, line, field_name, problem) -> NoReturn:
    raise WorkloadError(f"{path}:{line}: field {field_name!r}: {problem}")


def _int_field(row: dict, names: tuple[str, ...], path, line) -> int:
    for name in names:
        if name in row:
            raw = row[name]
            try:
                value = int(float(raw))
            except (TypeError, ValueError, OverflowError):  # OverflowError: inf
                _fail(path, line, name, f"expected a whole number of tokens, got {raw!r}")
            if value < 0 or value != float(raw):
                _fail(path, line, name, f"expected a whole number of tokens >= 0, got {raw!r}")
            return value
    _fail(path, line, names[0], f"missing (columns are {', '.join(row)}); expected one of {', '.join(names)}")


PROMPT_COLUMNS = ("num_prefill_tokens", "prompt_len", "input_len")
OUTPUT_COLUMNS = ("num_decode_tokens", "output_len")
TIME_COLUMNS = ("arrived_at", "arrival_time", "timestamp")


def _csv_header(path: str | Path) -> list[str]:
    """A CSV's column names, from its first line (a leading byte-order mark and spaces dropped)."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise WorkloadError(f"{path}:1: empty file, expected a header line")
    return [h.strip() for h in header]


def _csv_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row by column name) of a CSV with a header line, one row at a time (a published
    trace has millions); blank lines are skipped, a row with the wrong number of fields fails."""
    header = _csv_header(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise WorkloadError(
                    f"{path}:{reader.line_num}: wrong number of fields for the header "
                    f"({len(row)}, the header has {len(header)})"
                )
            yield reader.line_num, dict(zip(header, row))


def _read_csv(path: str | Path) -> list[tuple[int, dict]]:
    rows = list(_csv_rows(path))
    if not rows:
        raise WorkloadError(f"{path}: no requests after the header")
    return rows


def load_lengths_csv(
    path: str | Path, rate: float, duration_s: float | None = None, seed: int = 0
) -> Workload:
    """A CSV of token counts (columns num_prefill_tokens,num_decode_tokens: Vidur's trace schema; or
    prompt_len,output_len). Rows are replayed in order with Poisson arrivals at `rate`."""
    rows = _read_csv(path)
    lens = [
        (_int_field(r, PROMPT_COLUMNS, path, ln), _int_field(r, OUTPUT_COLUMNS, path, ln)) for ln, r in rows
    ]
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=len(lens))
    times = np.cumsum(gaps) - gaps[0]
    requests = [
        Request(str(i), float(t), p, o)
        for i, ((p, o), t) in enumerate(zip(lens, times))
        if duration_s is None or t < duration_s
    ]
    return Workload(requests, dict(kind="lengths_csv", path=str(path), rate=rate, seed=seed))


def load_sharegpt_json(
    path: str | Path,
    tokenize: Callable[[str], list[int]],
    rate: float,
    num_requests: int | None = None,
    seed: int = 0,
) -> Workload:
    """vLLM's ShareGPT JSON (a list of {"conversations": [{"from", "value"}, ...]}): the first two turns
    of conversations with at least two, tokenized, kept under vLLM's filter, sampled with a seed.
    `tokenize` is e.g. a transformers tokenizer's `encode`."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: expected a JSON list of conversations")
    pairs = []
    for i, entry in enumerate(data):
        convs = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(convs, list):
            raise WorkloadError(f"{path}: entry {i}: field 'conversations': missing or not a list")
        if len(convs) < 2:
            continue
        turns = []
        for j in (0, 1):
            if not isinstance(convs[j], dict) or not isinstance(convs[j].get("value"), str):
                raise WorkloadError(
                    f"{path}: entry {i}: field 'conversations[{j}].value': missing or not text"
                )
            turns.append(convs[j]["value"])
        pairs.append((len(tokenize(turns[0])), len(tokenize(turns[1]))))
    if not pairs:
        raise WorkloadError(f"{path}: no conversation with at least two turns")
    lens = np.asarray(pairs)
    lens = lens[vllm_filter(lens[:, 0], lens[:, 1])]
    rng = np.random.default_rng(seed)
    rng.shuffle(lens)
    if num_requests is not None:
        lens = lens[:num_requests]
    gaps = rng.exponential(1.0 / rate, size=len(lens))
    times = np.cumsum(gaps) - gaps[0]
    requests = [Request(str(i), float(t), int(p), int(o)) for i, (t, (p, o)) in enumerate(zip(times, lens))]
    return Workload(requests, dict(kind="sharegpt_json", path=str(path), rate=rate, seed=seed))


# ---------------------------------------------------------------------- timestamped traces
# kind=trace_csv reads three formats, told apart by the header (docs/workloads.md, "Timestamped traces"):
# pagelab's own (TIME_COLUMNS + PROMPT_COLUMNS + OUTPUT_COLUMNS, seconds), the Azure LLM inference traces
# 2023/2024 (date-times) and BurstGPT (seconds from the trace start; later releases add Session ID and
# Elapsed time columns, which are not read).
TRACE_FORMATS = ("auto", "pagelab", "azure", "burstgpt")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")
TRACE_HEADERS = {
    "pagelab": "arrived_at,num_prefill_tokens,num_decode_tokens",
    "azure": ",".join(AZURE_COLUMNS),
    "burstgpt": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
}


def detect_trace_format(path: str | Path, trace_format: str = "auto") -> str:
    """The format of a timestamped trace: the one its header has the columns of ("auto"), or the one
    named, checked against the header. Errors name the file, line 1, the column and the fix."""
    if trace_format not in TRACE_FORMATS:
        raise WorkloadError(
            f"unknown trace format {trace_format!r}: choose one of {', '.join(TRACE_FORMATS)}"
        )
    header = _csv_header(path)
    required = {
        "pagelab": next(((c,) for c in TIME_COLUMNS if c in header), (TIME_COLUMNS[0],)),
        "azure": AZURE_COLUMNS,
        "burstgpt": BURSTGPT_COLUMNS,
    }
    if trace_format == "auto":
        # BurstGPT first: its Timestamp must not be mistaken for a pagelab time column.
        for fmt in ("burstgpt", "azure", "pagelab"):
            if all(c in header for c in required[fmt]):
                return fmt
        known = "; ".join(f"{fmt}: {cols}" for fmt, cols in TRACE_HEADERS.items())
        raise WorkloadError(
            f"{path}:1: header {','.join(header)!r} is no timestamped trace format pagelab reads ({known}); "
            "rename the columns, or use kind=lengths_csv for a file without times"
        )
    missing = [c for c in required[trace_format] if c not in header]
    if missing:
        raise WorkloadError(
            f"{path}:1: field {missing[0]!r}: missing from the header {','.join(header)!r}, which "
            f"trace_format={trace_format} needs ({TRACE_HEADERS[trace_format]}); fix the header or use "
            "trace_format=auto"
        )
    return trace_format


def _seconds_field(row: dict, name: str, path, line) -> float:
    raw = row[name]
    try:
        t = float(raw)
    except ValueError:
        _fail(path, line, name, f"expected seconds, got {raw!r}")
    if not math.isfinite(t) or t < 0:
        _fail(path, line, name, f"expected seconds >= 0, got {raw!r}")
    return t


# Azure's timestamps: "2023-11-16 18:15:46.6805900", 7 fractional digits (100 ns ticks), more than
# Python's datetime keeps (and fromisoformat reads them only from 3.11); an offset is allowed.
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?")


@lru_cache(maxsize=1024)
def _day_number(date: str) -> int:
    return dt.date.fromisoformat(date).toordinal()


def _datetime_field(row: dict, name: str, path, line) -> tuple[int, float]:
    """A date-time as (whole seconds since 0001-01-01 UTC, fraction of a second), so that differences
    keep all 7 fractional digits. A time without an offset is taken as UTC."""
    raw = row[name].strip()
    m = _DATETIME.fullmatch(raw)
    if m:
        date, hh, mm, ss, frac, tz = m.groups()
        try:
            day = _day_number(date)
        except ValueError:
            day = None
        h, mi, s = int(hh), int(mm), int(ss)
        if day is not None and h < 24 and mi < 60 and s < 60:
            offset = 0
            if tz and tz != "Z":
                digits = tz[1:].replace(":", "")
                offset = (-1 if tz[0] == "-" else 1) * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
            return day * 86400 + h * 3600 + mi * 60 + s - offset, float(f"0.{frac}") if frac else 0.0
    _fail(path, line, name, f"expected a date-time like 2023-11-16 18:15:46.6805900, got {raw!r}")


@lru_cache(maxsize=4)
def _parsed_trace(path: str, mtime_ns: int, size: int, fmt: str, model: str | None) -> tuple:
    """A trace's kept rows in file order: (arrival times in s, prompt lengths, output lengths) as read-only
    arrays, and counts of the rows skipped. Cached while the file is unchanged (a sweep builds every
    point's trace from it). pagelab's times are kept as written; the published formats' are made
    relative to their earliest kept request."""
    # Packed arrays, not lists: the 2024 Azure traces have tens of millions of rows. Azure's seconds are
    # whole (int64), its fractions apart; the other formats' seconds are floats.
    seconds = array("q" if fmt == "azure" else "d")
    fractions, prompts, outputs = array("d"), array("q"), array("q")
    num_rows = num_failed = num_other_model = 0
    models: dict[str, int] = {}
    for ln, row in _csv_rows(path):
        num_rows += 1
        if fmt == "pagelab":
            name = next(c for c in TIME_COLUMNS if c in row)
            seconds.append(_seconds_field(row, name, path, ln))
            prompts.append(_int_field(row, PROMPT_COLUMNS, path, ln))
            outputs.append(_int_field(row, OUTPUT_COLUMNS, path, ln))
            continue
        if fmt == "burstgpt":
            row_model = row["Model"].strip()
            models[row_model] = models.get(row_model, 0) + 1
            if model is not None and row_model.lower() != model.lower():
                num_other_model += 1
                continue
            t, frac = _seconds_field(row, "Timestamp", path, ln), 0.0
            p = _int_field(row, ("Request tokens",), path, ln)
            o = _int_field(row, ("Response tokens",), path, ln)
        else:
            t, frac = _datetime_field(row, "TIMESTAMP", path, ln)
            p = _int_field(row, ("ContextTokens",), path, ln)
            o = _int_field(row, ("GeneratedTokens",), path, ln)
        if o == 0:  # a failed request (BurstGPT's Response tokens 0); a request generates >= 1 token
            num_failed += 1
            continue
        seconds.append(t)
        fractions.append(frac)
        prompts.append(p)
        outputs.append(o)
    if model is not None and num_rows and num_other_model == num_rows:
        seen = ", ".join(f"{name} ({count})" for name, count in sorted(models.items()))
        raise WorkloadError(
            f"{path}: no row has Model {model!r} (the file's models: {seen}); fix workload.trace_model"
        )
    if not seconds:
        failed = f" ({num_failed} skipped: no output tokens)" if num_failed else ""
        raise WorkloadError(f"{path}: no requests after the header{failed}")
    if fmt == "azure":  # whole seconds first, then the fractions: no precision lost to the epoch
        whole = np.frombuffer(seconds, dtype=np.int64)
        times = (whole - whole.min()).astype(np.float64) + np.frombuffer(fractions, dtype=np.float64)
    else:
        times = np.array(seconds, dtype=np.float64)
    if fmt != "pagelab":
        times -= times.min()
    if num_failed or num_other_model:
        output_column = {"azure": "GeneratedTokens", "burstgpt": "Response tokens"}[fmt]
        parts = [f"{num_failed} failed ({output_column} 0)"] if num_failed else []
        if num_other_model:
            parts.append(f"{num_other_model} of models other than {model}")
        log.info(
            "%s: skipped %d of %d rows: %s", path, num_failed + num_other_model, num_rows, ", ".join(parts)
        )
    arrays = (times, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    counts = dict(num_trace_rows=num_rows, num_skipped_failed=num_failed, num_skipped_model=num_other_model)
    return (*arrays, counts)


def rescale_times(times, rate: float) -> np.ndarray:
    """Arrival times multiplied by (their mean rate / rate), so that their mean rate is `rate`: the
    order, the bursts and every ratio between gaps are kept."""
    if rate <= 0 or not math.isfinite(rate):
        raise WorkloadError(f"request rate must be a positive number of requests/s, got {rate}")
    t = np.asarray(times, dtype=np.float64)
    own = mean_rate(t)
    if not (own > 0 and math.isfinite(own)):
        raise WorkloadError(
            f"cannot rescale {len(t)} arrival(s) to {rate:g} req/s: their mean rate is undefined (it needs "
            "two arrivals at different times); keep the trace's own times (rescale=false)"
        )
    return t * (own / rate)


def _replay(path, times: np.ndarray, rate: float | None, duration_s: float | None):
    """The arrival order of a trace's rows, their times (rescaled to `rate` unless None), how many
    arrive before duration_s (None: all), and the workload meta's timing keys."""
    order = np.argsort(times, kind="stable")
    scaled = times[order] if rate is None else rescale_times(times[order], rate)
    num = len(scaled) if duration_s is None else int(np.searchsorted(scaled, duration_s, side="left"))
    if num == 0:
        raise WorkloadError(
            f"{path}: no request arrives before duration_s={duration_s:g} (the first at {scaled[0]:.3f} s); "
            "raise duration_s"
        )
    if duration_s is not None and num == len(scaled):
        log.info(
            "%s: the trace ends at %.1f s, before duration_s=%g: all %d requests are replayed and the run "
            "ends with them (the trace is not looped)",
            path,
            scaled[-1],
            duration_s,
            num,
        )
    own = mean_rate(times)
    timing = dict(
        rate=rate,
        rescaled=rate is not None,
        time_scale=1.0 if rate is None else own / rate,
        trace_mean_rate=own,
        trace_span_s=float(scaled[-1] - scaled[0]),
        duration_s=duration_s,
    )
    return order, scaled, num, timing


def load_trace_csv(
    path: str | Path,
    rate: float | None = None,
    duration_s: float | None = None,
    trace_format: str = "auto",
    model: str | None = None,
) -> Workload:
    """A timestamped trace (docs/workloads.md, "Timestamped traces"), in arrival order: pagelab's own CSV
    (arrived_at,num_prefill_tokens,num_decode_tokens; seconds), the Azure LLM inference trace
    (TIMESTAMP,ContextTokens,GeneratedTokens; date-times) or BurstGPT (Timestamp,Model,Request tokens,
    Response tokens,...; seconds), told apart by the header unless `trace_format` names one.

    rate: None keeps the trace's own times; a rate rescales them to that mean rate (rescale_times).
    duration_s: None keeps every request; else those arriving before it (after rescaling).
    model: BurstGPT only, keep the rows of this Model (e.g. ChatGPT, GPT-4; any case).
    Rows with no output tokens (BurstGPT's failed requests) are skipped and counted in the log and meta.
    A request's id is its row's index among the kept rows, in file order."""
    fmt = detect_trace_format(path, trace_format)
    if model is not None and fmt != "burstgpt":
        raise WorkloadError(
            f"{path}: a model filter (trace_model={model}) applies to BurstGPT's Model column, but this file "
            f"is in the {fmt} format; unset trace_model"
        )
    st = os.stat(path)
    times, prompts, outputs, counts = _parsed_trace(str(path), st.st_mtime_ns, st.st_size, fmt, model)
    order, scaled, num, timing = _replay(path, times, rate, duration_s)
    requests = [
        Request(str(i), float(t), int(prompts[i]), int(outputs[i])) for i, t in zip(order[:num], scaled[:num])
    ]
    meta = dict(
        kind="trace_csv",
        path=str(path),
        format=fmt,
        model=model,
        **timing,
        **counts,
        **data_meta(Path(path)),
    )
    return Workload(requests, meta)


def load_azure_csv(path: str | Path, rate: float | None = None, duration_s: float | None = None) -> Workload:
    """The Azure LLM inference trace (TIMESTAMP,ContextTokens,GeneratedTokens): load_trace_csv."""
    return load_trace_csv(path, rate, duration_s, "azure")


def load_burstgpt_csv(
    path: str | Path, rate: float | None = None, duration_s: float | None = None, model: str | None = None
) -> Workload:
    """BurstGPT (Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type): load_trace_csv."""
    return load_trace_csv(path, rate, duration_s, "burstgpt", model)


def trace_workload(
    path: str | Path,
    rate: float,
    duration_s: float,
    trace_format: str = "auto",
    rescale: bool | None = None,
    model: str | None = None,
) -> Workload:
    """An experiment's kind=trace_csv point: the trace at the sweep's `rate`, cut to `duration_s`.

    rescale None: by format, true for the published formats (azure, burstgpt), false for pagelab's own,
    which replays as it did before rescaling existed (its own times, the whole trace, the rate unused).
    True: the arrival times rescaled to mean rate `rate`, then cut to duration_s. False: the trace's own
    times, cut to duration_s (pagelab's own format: not cut)."""
    fmt = detect_trace_format(path, trace_format)
    if rescale is None:
        rescale = fmt != "pagelab"
    cut = duration_s if rescale or fmt != "pagelab" else None
    return load_trace_csv(path, rate if rescale else None, cut, fmt, model)


# ---------------------------------------------------------------------- Mooncake traces
# kvcache-ai/Mooncake's traces (FAST25-release/traces/*.jsonl): one JSON object per line, `timestamp` in
# ms since the trace's start, `input_length` and `output_length` in tokens, `hash_ids` one id per
# 512-token block of the prompt (the last may be partial), equal ids meaning equal blocks.
MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
MOONCAKE_EXAMPLE = (
    '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}'
)


def _json_tokens(obj: dict, name: str, path, line) -> int:
    raw = obj[name]
    if (
        isinstance(raw, bool)
        or not isinstance(raw, (int, float))
        or not math.isfinite(raw)  # json reads NaN and Infinity
        or raw != int(raw)
        or raw < 0
    ):
        _fail(path, line, name, f"expected a whole number of tokens >= 0, got {raw!r}")
    return int(raw)


@lru_cache(maxsize=4)
def _parsed_mooncake(path: str, mtime_ns: int, size: int, block_tokens: int) -> tuple:
    """A Mooncake trace's kept lines in file order: (times in s after the earliest, prompt lengths,
    output lengths, hash ids per line) and counts of the lines read and skipped (no output tokens).
    Cached while the file is unchanged."""
    times, prompts, outputs, hash_ids = [], [], [], []
    num_rows = num_failed = 0
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            num_rows += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(
                    f"{path}:{ln}: not valid JSON ({e.msg}); a Mooncake trace has one request per line, "
                    f"e.g. {MOONCAKE_EXAMPLE}"
                ) from None
            if not isinstance(obj, dict):
                raise WorkloadError(f"{path}:{ln}: expected a JSON object like {MOONCAKE_EXAMPLE}")
            for name in MOONCAKE_FIELDS:
                if name not in obj:
                    _fail(
                        path,
                        ln,
                        name,
                        f"missing (the line has {', '.join(obj) or 'no fields'}); each line needs "
                        f"{', '.join(MOONCAKE_FIELDS)}, e.g. {MOONCAKE_EXAMPLE}",
                    )
            t = obj["timestamp"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t >= 0):
                _fail(path, ln, "timestamp", f"expected milliseconds >= 0, got {t!r}")
            prompt = _json_tokens(obj, "input_length", path, ln)
            output = _json_tokens(obj, "output_length", path, ln)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in ids):
                _fail(path, ln, "hash_ids", f"expected a list of integer block ids, got {str(ids)[:80]}")
            full, partial = divmod(prompt, block_tokens)
            if len(ids) not in (full, full + (partial > 0)):
                expected = f"{full + 1} (or {full})" if partial else str(full)
                _fail(
                    path,
                    ln,
                    "hash_ids",
                    f"{len(ids)} block ids for input_length {prompt}, expected {expected}: one per "
                    f"{block_tokens}-token block, the last may be partial; fix the line, or the block size "
                    "the trace was hashed with (block_tokens)",
                )
            if output == 0:  # as trace_csv: a request generates at least one token
                num_failed += 1
                continue
            times.append(t / 1000)
            prompts.append(prompt)
            outputs.append(output)
            hash_ids.append(tuple(ids))
    if not times:
        failed = f" ({num_failed} skipped: no output tokens)" if num_failed else ""
        raise WorkloadError(
            f"{path}: no requests in the file{failed}; expected lines like {MOONCAKE_EXAMPLE}"
        )
    if num_failed:
        log.info("%s: skipped %d of %d lines: output_length 0", path, num_failed, num_rows)
    t = np.array(times, dtype=np.float64)
    t -= t.min()
    arrays = (t, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    counts = dict(num_trace_rows=num_rows, num_skipped_failed=num_failed)
    return (*arrays, tuple(hash_ids), counts)


def mooncake_segments(
    hash_ids: tuple[int, ...], prompt_len: int, request_id: str, block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> list[tuple[str | int, int]]:
    """A Mooncake request's prompt as segments: block j is segment hash_ids[j] (integer ids), the last
    one possibly partial (the first tokens of that segment); a partial block without an id (the trace
    gives input_length // 512 ids) is the request's own segment."""
    segments: list[tuple[str | int, int]] = [
        (h, min(block_tokens, prompt_len - j * block_tokens)) for j, h in enumerate(hash_ids)
    ]
    rest = prompt_len - len(hash_ids) * block_tokens
    if rest > 0:
        segments.append((f"r{request_id}.tail", rest))
    return segments


def load_mooncake(
    path: str | Path,
    rate: float | None = None,
    duration_s: float | None = None,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
) -> Workload:
    """A Mooncake trace (JSON lines of timestamp in ms, input_length, output_length, hash_ids), in
    arrival order, with each prompt's blocks as segments (mooncake_segments): requests naming the same
    hash ids share those tokens, so the prefix cache sees the trace's reuse.

    rate: None keeps the trace's own times (ms / 1000, after the earliest); a rate rescales them to that
    mean rate (rescale_times). duration_s: None keeps every request; else those arriving before it.
    Lines with output_length 0 are skipped and counted, as trace_csv's. A request's id is its line's
    index among the kept lines, in file order."""
    if not Path(path).is_file():
        raise WorkloadError(f"{path}: no such file")
    st = os.stat(path)
    times, prompts, outputs, hash_ids, counts = _parsed_mooncake(
        str(path), st.st_mtime_ns, st.st_size, block_tokens
    )
    order, scaled, num, timing = _replay(path, times, rate, duration_s)
    requests = []
    for i, t in zip(order[:num].tolist(), scaled[:num].tolist()):
        p = int(prompts[i])
        segments = mooncake_segments(hash_ids[i], p, str(i), block_tokens)
        requests.append(Request(str(i), t, p, int(outputs[i]), segments=segments))
    meta = dict(
        kind="mooncake",
        path=str(path),
        **timing,
        block_tokens=block_tokens,
        **counts,
        **data_meta(Path(path)),
    )
    return Workload(requests, meta)


def mooncake_workload(
    path: str | Path, rate: float, duration_s: float, rescale: bool | None = None
) -> Workload:
    """An experiment's kind=mooncake point: rescale true (or null, the default) rescales the trace to
    the sweep's `rate`; false keeps its own times (the rate unused). Then cut to duration_s."""
    return load_mooncake(path, rate if rescale is None or rescale else None, duration_s)
