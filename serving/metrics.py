"""/metrics in Prometheus's text format (prometheus_client), with vLLM's metric names so dashboards and
scrapers written for vLLM read pagelab, plus pagelab's own: the KV cache in the paper's Figure 2 classes,
live."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from paged.async_engine import AsyncEngine

# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class _EngineCollector:
    """Gauges read from the engine thread's last snapshot at scrape time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def collect(self):
        s = self.engine.snapshot
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests in the running batch.", s.num_running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("vllm:num_requests_swapped", "Requests swapped out to host memory.", s.num_swapped),
            ("vllm:gpu_cache_usage_perc", "Fraction of KV cache blocks in use (1 = all).", s.cache_usage),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        c = CounterMetricFamily("vllm:num_preemptions", "Preemptions (swap or recompute).")
        c.add_metric([], s.num_preemptions)
        yield c
        g = GaugeMetricFamily(
            "pagelab:kv_cache_fraction",
            "KV cache slots by the paper's Figure 2 class (token states, reservation, internal and "
            "external fragmentation, free), as fractions of all slots, after the last step.",
            labels=["kind"],
        )
        for kind, value in s.memory.items():
            g.add_metric([kind], value)
        yield g


class Metrics:
    def __init__(self, engine: AsyncEngine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        r = self.registry
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", registry=r)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", buckets=TTFT_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Time per output token after the first.",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency, arrival to finish.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "vllm:request_success", "Finished requests by reason.", ["finished_reason"], registry=r
        )

    def finished(self, gen, group) -> None:
        """A request finished (gen: serving.app.Generation)."""
        now = time.monotonic()
        self.prompt_tokens.inc(group.num_prompt_tokens)
        self.generation_tokens.inc(gen.num_output_tokens)
        self.e2e.observe(now - gen.start)
        if gen.first_token_time is not None:
            self.ttft.observe(gen.first_token_time - gen.start)
            longest = max((s.num_output_tokens for s in group.seqs), default=0)
            if longest > 1:
                self.tpot.observe((now - gen.first_token_time) / (longest - 1))
        for reason in gen.finish_reason:
            self.requests.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
