"""Which current beams the new beams of a beam-search step descend from, for executors without a model.

Real beam search (paged/beam_search.py; the paper's artifact does the same over OPT-13B's
log-probabilities) keeps the W best continuations of all W beams. How many distinct parents survive
each step, and which, decides how much history the beams share, and so the block sharing of the
paper's Figures 14 and 15 (section 4.4). A simulator has no log-probabilities; `BeamModel` draws the
parents instead, from a model calibrated on real beam runs (scripts/calibrate_beam.py,
harness/data/beam_model.json), never on the paper's figures.

kind "geometric" (two parameters per beam width): the current beams are ranked by cumulative
log-probability (0 = best) and new beam j takes the slot of current beam j. With probability `keep`
it continues that beam; otherwise its parent is drawn with P(rank r) = theta^r / sum_{s<m} theta^s over
the m current beams. Slots are independent. keep = 0 and theta = 1 is a uniform draw; keep = 1 never
forks; small theta sends the replacements to the best beam. Why two: real beams mostly continue
themselves (more distinct parents per step than any independent draw gives, keep), and the beams
they are replaced by are mostly the best ones (theta). `theta_by_width` / `keep_by_width` hold a
fit per beam width; a width without one uses the nearest fitted width's (the smaller on a tie), and
`theta` / `keep` apply when there is none.

kind "uniform": the simulator's earlier draw, each new beam's parent uniform over the current beams,
kept draw for draw so that earlier results reproduce.

Torch-free and deterministic given the `random.Random` it is handed.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

KINDS = ("geometric", "uniform")
CALIBRATION_FILE = Path(__file__).resolve().parent.parent / "harness" / "data" / "beam_model.json"


@dataclass(frozen=True)
class BeamModel:
    """Parent ranks of a beam-search step's new beams (module docstring)."""

    kind: str = "geometric"
    theta: float = 1.0
    keep: float = 0.0
    theta_by_width: dict[int, float] = field(default_factory=dict)
    keep_by_width: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"beam model kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for t in (self.theta, *self.theta_by_width.values()):
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"theta must be positive and finite, got {t}")
        for k in (self.keep, *self.keep_by_width.values()):
            if not 0.0 <= k <= 1.0:
                raise ValueError(f"keep must be in [0, 1], got {k}")

    def theta_for(self, width: int) -> float:
        return _nearest(self.theta_by_width, width, self.theta)

    def keep_for(self, width: int) -> float:
        return _nearest(self.keep_by_width, width, self.keep)

    def rank_probs(self, num_beams: int, width: int | None = None) -> list[float]:
        """P(rank r) of a replacement's parent over `num_beams` current beams (width: whose fit)."""
        if self.kind == "uniform":
            return [1.0 / num_beams] * num_beams
        return _geometric(self.theta_for(width or num_beams), num_beams)

    def slot_probs(self, num_beams: int, width: int | None = None) -> list[list[float]]:
        """[j][r]: P(the new beam in slot j descends from the current beam of rank r)."""
        g = self.rank_probs(num_beams, width)
        k = 0.0 if self.kind == "uniform" else self.keep_for(width or num_beams)
        return [[(1 - k) * g[r] + (k if r == j else 0.0) for r in range(num_beams)] for j in range(num_beams)]

    def draw(self, num_beams: int, num_new: int, rng: random.Random, width: int | None = None) -> list[int]:
        """Parent ranks of `num_new` new beams; entry j is the parent of the beam in slot j (for a
        geometric model, its new rank)."""
        if self.kind == "uniform":
            return sorted(rng.choices(range(num_beams), k=num_new))
        w = width or num_beams
        cum = _cumulative(self.rank_probs(num_beams, w))
        keep = self.keep_for(w)
        ranks = range(num_beams)
        out = []
        for j in range(num_new):
            if j < num_beams and keep > 0.0 and rng.random() < keep:
                out.append(j)
            else:
                out.append(rng.choices(ranks, cum_weights=cum)[0])
        return out

    def with_overrides(self, **params: float) -> BeamModel:
        """The same model with `theta` and/or `keep` set for every width (sensitivity runs)."""
        changes: dict = {}
        if "theta" in params:
            changes.update(theta=float(params["theta"]), theta_by_width={})
        if "keep" in params:
            changes.update(keep=float(params["keep"]), keep_by_width={})
        unknown = set(params) - {"theta", "keep"}
        if unknown:
            raise ValueError(f"unknown beam model parameter(s) {sorted(unknown)}: theta, keep")
        return replace(self, kind="geometric", **changes)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "theta": self.theta,
            "keep": self.keep,
            "theta_by_width": {str(w): t for w, t in sorted(self.theta_by_width.items())},
            "keep_by_width": {str(w): k for w, k in sorted(self.keep_by_width.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> BeamModel:
        return cls(
            kind=d.get("kind", "geometric"),
            theta=float(d.get("theta", 1.0)),
            keep=float(d.get("keep", 0.0)),
            theta_by_width={int(w): float(t) for w, t in (d.get("theta_by_width") or {}).items()},
            keep_by_width={int(w): float(k) for w, k in (d.get("keep_by_width") or {}).items()},
        )


def _nearest(by_width: dict[int, float], width: int, default: float) -> float:
    if not by_width:
        return default
    if width in by_width:
        return by_width[width]
    return by_width[min(by_width, key=lambda w: (abs(w - width), w))]


def _geometric(theta: float, m: int) -> list[float]:
    # theta^r in log space, normalised from the largest: no overflow at large theta.
    logs = [r * math.log(theta) for r in range(m)]
    top = max(logs)
    w = [math.exp(x - top) for x in logs]
    total = sum(w)
    return [x / total for x in w]


def _cumulative(weights: list[float]) -> list[float]:
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(acc)
    return out


def load_beam_model(spec: str | BeamModel | None = "calibrated") -> BeamModel:
    """A beam model by name: "calibrated" (harness/data/beam_model.json's fit), "uniform",
    "geometric:theta=T,keep=K" (one setting for every width; omitted: theta 1, keep 0), or
    "calibrated:keep=K" / "calibrated:theta=T" (the fit with one parameter set for every width). A
    BeamModel passes through; None is "calibrated"."""
    if isinstance(spec, BeamModel):
        return spec
    spec = spec or "calibrated"
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"beam_model parameters are key=value, got {item!r} in {spec!r}")
        params[key.strip()] = float(value)
    if name == "uniform" and not params:
        return BeamModel(kind="uniform")
    if name == "calibrated":
        with open(CALIBRATION_FILE) as f:
            model = BeamModel.from_dict(json.load(f)["model"])
        return model.with_overrides(**params) if params else model
    if name == "geometric":
        return BeamModel().with_overrides(**params)
    raise ValueError(
        f"beam_model must be calibrated, uniform, geometric:theta=T,keep=K or calibrated:keep=K, got {spec!r}"
    )


# ----------------------------------------------------------------------------------- fitting
#
# A step's observation is its count vector: how many new beams descend from the current beam of each
# rank (beam search's output ranks its new beams itself, so slots are not observed; the count vector
# is what the model predicts without them). The likelihood is exact: a dynamic programme over slots.


def count_vector_probs(model: BeamModel, num_beams: int, width: int | None = None) -> dict[tuple, float]:
    """P(count vector) for one step with `num_beams` current and as many new beams."""
    dist = {(0,) * num_beams: 1.0}
    for row in model.slot_probs(num_beams, width):
        new: dict[tuple, float] = {}
        for counts, p in dist.items():
            for r, q in enumerate(row):
                if q > 0.0:
                    c = counts[:r] + (counts[r] + 1,) + counts[r + 1 :]
                    new[c] = new.get(c, 0.0) + p * q
        dist = new
    return dist


def distinct_parents_probs(model: BeamModel, num_beams: int, width: int | None = None) -> list[float]:
    """P(k distinct parents), k = 1 .. num_beams, for one step of `num_beams` beams."""
    out = [0.0] * num_beams
    for counts, p in count_vector_probs(model, num_beams, width).items():
        out[sum(1 for c in counts if c) - 1] += p
    return out


def log_likelihood(model: BeamModel, observed: Mapping[tuple, int], width: int | None = None) -> float:
    """Log-likelihood of observed count vectors {count vector: steps}, all of one number of beams."""
    if not observed:
        return 0.0
    m = len(next(iter(observed)))
    probs = count_vector_probs(model, m, width)
    return sum(n * math.log(max(probs.get(tuple(c), 0.0), 1e-300)) for c, n in observed.items())


def _golden_max(f, lo: float, hi: float, iters: int = 40) -> tuple[float, float]:
    """(argmax, max) of a unimodal f on [lo, hi] by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (c, fc) if fc >= fd else (d, fd)


def fit(observed: Mapping[tuple, int], keep: float | None = None) -> BeamModel:
    """Maximum-likelihood (theta, keep) of the geometric model from one width's count vectors
    ({count vector: steps}); `keep` given: fit theta alone (keep=0: independent draws). Nested
    golden-section searches, theta over log(theta) in [-12, 6], keep over [0, 0.999]."""
    if not observed or not sum(observed.values()):
        raise ValueError("no steps to fit")

    def best_theta(k: float) -> tuple[float, float]:
        return _golden_max(
            lambda lt: log_likelihood(BeamModel(theta=math.exp(lt), keep=k), observed), -12.0, 6.0
        )

    if keep is not None:
        lt, _ = best_theta(keep)
        return BeamModel(theta=math.exp(lt), keep=keep)
    k, _ = _golden_max(lambda k: best_theta(k)[1], 0.0, 0.999, iters=30)
    lt, _ = best_theta(k)
    return BeamModel(theta=math.exp(lt), keep=k)
