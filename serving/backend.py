"""What the server serves: the engine (real model runner or simulated GPU, under any memory policy), the
tokenizer and the limits the API checks requests against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paged import Engine

SMOLLM2 = "smollm2-135m"


class ByteTokenizer:
    """For models without a tokenizer (random-weight presets, the simulated GPU): a prompt's UTF-8
    bytes are its token ids, and any id decodes to one printable ASCII character. Lengths are what
    matter there; the text is not meant to be read."""

    chat_template = None
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + i % 95) for i in ids)


@dataclass
class Backend:
    engine: Engine
    tokenizer: object  # encode(str) -> ids, decode(ids) -> str; a transformers tokenizer when real
    model_name: str
    max_model_len: int
    num_gpu_blocks: int
    block_size: int
    eos_token_id: int | None
    vocab_size: int
    pace: bool  # a simulated executor: pace its steps in wall time
    description: str

    def decode(self, ids: list[int]) -> str:
        """Generated text, special tokens (EOS, chat markers) left out, as vLLM's server does."""
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token's text for logprobs (special tokens spelled out, as they were sampled)."""
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.decode([token_id])
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The tokenizer's chat template (with the assistant's turn opened), or for a tokenizer without
        one, "role: content" lines and "assistant:"."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return tok.encode(text, add_special_tokens=False)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return tok.encode(text)


def resolve_model(model: str) -> str:
    """`smollm2-135m` -> its converted checkpoint directory (paged/checkpoints.py); anything else as
    given (a checkpoint directory or a model preset)."""
    if model == SMOLLM2:
        from paged.checkpoints import smollm2_135m

        return str(smollm2_135m())
    return model


def load_backend(
    model: str,
    backend: str = "real",
    system: str = "vllm",
    hardware: str = "a100-40gb",
    kv_cache_gib: float | None = None,
    max_model_len: int | None = None,
    block_size: int = 16,
    dtype: str = "auto",
    seed: int = 0,
    served_name: str | None = None,
    enable_chunked_prefill: bool = False,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int = 256,
    scheduling_policy: str = "fcfs",
) -> Backend:
    """real: the model (checkpoint directory, `smollm2-135m`, or a preset with random weights) on this
    machine; sim: a model preset's shapes on `hardware`, its steps timed by the cost model.
    enable_chunked_prefill, max_num_batched_tokens, max_num_seqs, scheduling_policy: the scheduler's,
    as `LLM` takes them (chunking runs mixed steps; its budget defaults to vLLM's 512)."""
    from baselines.registry import SYSTEMS, build_system

    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}: choose one of {', '.join(SYSTEMS)}")
    sched = dict(
        enable_chunked_prefill=enable_chunked_prefill,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        scheduling_policy=scheduling_policy,
    )
    if backend == "sim":
        return _sim_backend(
            model, system, hardware, kv_cache_gib, max_model_len, block_size, seed, served_name, **sched
        )
    if backend != "real":
        raise ValueError(f"backend must be real or sim, got {backend!r}")
    from paged import LLM, Scheduler
    from paged.real_executor import RealExecutor

    path = resolve_model(model)
    if dtype == "auto":  # fp16 on a GPU; on a CPU bf16 only where it is native (paged/cpu_features.py)
        import torch

        from paged.cpu_features import default_cpu_dtype

        dtype = "float16" if torch.cuda.is_available() else default_cpu_dtype()
    llm = LLM(
        model=path,
        dtype=dtype,
        seed=seed,
        kv_cache_gib=kv_cache_gib,
        max_model_len=max_model_len,
        block_size=block_size,
        **sched,
    )
    memory, sched_cfg = build_system(system, llm.cache_config, llm.scheduler_config)
    engine = Engine(Scheduler(sched_cfg, memory), RealExecutor(llm.runner, seed=seed))
    tokenizer = llm.tokenizer or ByteTokenizer()
    name = served_name or (SMOLLM2 if model == SMOLLM2 else Path(model).name or model)
    return Backend(
        engine=engine,
        tokenizer=tokenizer,
        model_name=name,
        max_model_len=sched_cfg.max_model_len,
        num_gpu_blocks=llm.cache_config.num_gpu_blocks,
        block_size=block_size,
        eos_token_id=llm.eos_token_id,
        vocab_size=llm.model.config.vocab_size,
        pace=False,
        description=f"{name} on this machine ({llm.runner.device}, {dtype}), {system}",
    )


def _sim_backend(
    model,
    system,
    hardware,
    kv_cache_gib,
    max_model_len,
    block_size,
    seed,
    served_name,
    enable_chunked_prefill=False,
    max_num_batched_tokens=None,
    max_num_seqs=256,
    scheduling_policy="fcfs",
) -> Backend:
    from harness.server import ServerConfig
    from harness.simulate import SimConfig, build
    from paged.llm import default_batched_tokens
    from paged.presets import load_model

    if max_num_batched_tokens is None:  # as LLM's defaults
        spec = load_model(model)
        max_len = max_model_len or spec.max_position_embeddings
        max_num_batched_tokens = default_batched_tokens(enable_chunked_prefill, max_num_seqs, max_len)
    server = ServerConfig(
        block_size=block_size,
        kv_cache_gib=kv_cache_gib,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        step_composition="mixed" if enable_chunked_prefill else "separate",
        enable_chunked_prefill=enable_chunked_prefill,
        scheduling_policy=scheduling_policy,
    )
    cfg = SimConfig(
        system=system,
        model=model,
        hardware=hardware,
        server=server,
        seed=seed,
        track_memory=False,
        fast_forward=False,
    )
    engine, cap, _ = build(cfg)
    name = served_name or Path(str(model)).stem
    return Backend(
        engine=engine,
        tokenizer=ByteTokenizer(),
        model_name=name,
        max_model_len=engine.scheduler.config.max_model_len,
        num_gpu_blocks=cap.num_gpu_blocks,
        block_size=block_size,
        eos_token_id=None,
        vocab_size=load_model(model).vocab_size,
        pace=True,
        description=f"{name} simulated on {hardware} (cost model, random tokens), {system}",
    )
