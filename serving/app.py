"""The OpenAI-compatible HTTP server over the engine loop (paged/async_engine.py): FastAPI routes shaped
like vLLM's server (/v1/completions, /v1/chat/completions, /v1/models, /health, /tokenize,
/detokenize, /metrics). Bad input gets a 4xx in OpenAI's error format and the server keeps serving; a
client that disconnects aborts its request, which frees its blocks; a full waiting queue answers 503."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from paged.async_engine import AsyncEngine, EngineStopped, QueueFull, Update
from paged.sampling_params import SamplingParams
from paged.sequence import SequenceGroup, SequenceStatus
from serving.backend import Backend
from serving.metrics import Metrics
from serving.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Sampling,
)

_ids = itertools.count()


class Generation:
    """One request group in flight: its updates arrive on an asyncio queue from the engine thread."""

    def __init__(
        self, app_state, prompt: list[int], params: SamplingParams, stop: list[str], priority: int = 0
    ) -> None:
        self.state = app_state
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        self.stop = stop
        b = app_state.backend
        self.group = SequenceGroup(
            f"{next(_ids)}", prompt, params, 0.0, eos_token_id=b.eos_token_id, priority=priority
        )
        self.text = [""] * params.n  # text sent, per sequence
        self.decoded = [""] * params.n  # text decoded so far (sent + held back)
        self.offsets = [(0, 0)] * params.n  # incremental detokenization: (prefix, read) token offsets
        self.finish_reason: list[str | None] = [None] * params.n
        self.stop_tokens: list[int | None] = [None] * params.n  # tokens up to the stop string
        # SamplingParams.logprobs: per sequence, the (token, {token: logprob}) pairs sent so far
        self.sent_logprobs: list[list[tuple[int, dict]]] = [[] for _ in range(params.n)]
        self.text_offset = [0] * params.n  # completions' text_offset of the next token's text
        self.first_token_time: float | None = None
        self.done = False
        self.start = time.monotonic()

    def submit(self) -> None:
        try:
            self.state.engine.add(
                self.group, lambda u: self.loop.call_soon_threadsafe(self.queue.put_nowait, u)
            )
        except QueueFull as e:
            raise APIError(f"server overloaded: {e}; retry later", 503) from None
        except EngineStopped as e:
            raise APIError(f"{e}: the server is shutting down or failed (see /health)", 503) from None

    def abort(self) -> None:
        if not self.done:
            self.state.engine.abort(self.group.request_id)

    async def updates(self):
        """(index, text delta, logprobs) as tokens arrive, then None when finished. A stop string ends
        its sequence's text before it (and, once every sequence has ended, the request); text that
        could still begin a stop string is held back until it cannot, or the sequence ends. logprobs:
        the (token, top) pairs of every token decoded since the last delta (None when not asked
        for), so a chunk's logprobs may include tokens whose text is still held back; a token that
        yields no text yet sends its entry with the next chunk."""
        hold = max((len(s) for s in self.stop), default=1) - 1
        while not self.done:
            update = await self.queue.get()
            if update.new_tokens and self.first_token_time is None:
                self.first_token_time = time.monotonic()
            for i in update.new_tokens:
                if self.finish_reason[i] is None:
                    seq = update.group.seqs[i]
                    tokens = seq.output_token_ids  # read once: the engine thread keeps appending
                    delta = self._advance(i, tokens, hold, final=False)
                    if delta:
                        yield i, delta, self._new_logprobs(i, seq, tokens)
            if update.finished:
                self.done = True
                for i, seq in enumerate(update.group.seqs[: len(self.text)]):  # flush what was held back
                    delta, tokens = "", seq.output_token_ids
                    if self.finish_reason[i] is None:
                        delta = self._advance(i, tokens, hold, final=True)
                    logprobs = self._new_logprobs(i, seq, tokens)
                    if delta or logprobs:
                        yield i, delta, logprobs
                self._finish(update.group)
            elif self.stop and all(r is not None for r in self.finish_reason):
                self.state.engine.abort(self.group.request_id)  # every sequence hit a stop string
        yield None

    def _new_logprobs(self, i: int, seq, tokens: list[int]) -> list[tuple[int, dict]] | None:
        """Sequence i's (token, {token: logprob}) pairs not sent yet among `tokens` (its output tokens
        as the text was decoded from them), up to its stop string's token."""
        if self.group.sampling_params.logprobs is None:
            return None
        kept = seq.output_logprobs or []  # the engine thread appends a token's entry before the token
        end = min(len(kept), len(tokens))
        if self.stop_tokens[i] is not None:
            end = min(end, self.stop_tokens[i])
        sent = self.sent_logprobs[i]
        new = [(tokens[j], kept[j]) for j in range(len(sent), end)]
        sent += new
        return new

    def _detokenize(self, i: int, tokens: list[int], final: bool) -> str:
        """Sequence i's text for its newest tokens, decoding only a few tokens per update (vLLM's
        incremental detokenizer): the tokens from `prefix` to `read` decoded already; their text and
        that of the tokens from `prefix` on differ by the new text. A tokenizer that merges across
        tokens (leading spaces, multi-byte characters) sees the same context both times; text that
        ends in an incomplete character (U+FFFD) waits for its last byte, unless the sequence ended."""
        prefix, read = self.offsets[i]
        decode = self.state.backend.decode
        before = decode(tokens[prefix:read])
        after = decode(tokens[prefix:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.offsets[i] = (read, len(tokens))
        return after[len(before) :]

    def _advance(self, i: int, tokens: list[int], hold: int, final: bool) -> str:
        """Sequence i's new text to send, given all its tokens so far: up to a stop string if one
        appeared, else all but the last `hold` characters (which could begin one) unless final."""
        sent, old = len(self.text[i]), len(self.decoded[i])
        self.decoded[i] += self._detokenize(i, tokens, final)
        full = self.decoded[i]
        # Only the new text, and the few characters before it that a stop string could span, are new.
        cuts = [c for c in (full.find(s, max(0, old - len(s) + 1)) for s in self.stop) if c >= 0]
        if cuts:
            self.finish_reason[i] = "stop"
            self.stop_tokens[i] = len(tokens)
            end = min(cuts)
        else:
            end = len(full) if final else max(sent, len(full) - hold)
        delta = full[sent:end]
        self.text[i] += delta
        return delta

    def _finish(self, group: SequenceGroup) -> None:
        if group.reject_reason is not None:
            raise APIError(group.reject_reason, 400)
        for i, seq in enumerate(group.seqs[: len(self.text)]):
            if self.finish_reason[i] is None:
                self.finish_reason[i] = {
                    SequenceStatus.FINISHED_STOPPED: "stop",
                    SequenceStatus.FINISHED_ABORTED: "abort",  # the server stopped under it
                }.get(seq.status, "length")
        self.state.metrics.finished(self, group)

    @property
    def num_prompt_tokens(self) -> int:
        return self.group.num_prompt_tokens

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens, each sequence counted up to its stop string (it may run on a step or two
        until the abort lands)."""
        return sum(
            s.num_output_tokens if cut is None else min(cut, s.num_output_tokens)
            for s, cut in zip(self.group.seqs, self.stop_tokens)
        )


def create_app(backend: Backend, max_waiting: int = 1024) -> FastAPI:
    engine = AsyncEngine(backend.engine, pace=backend.pace, max_waiting=max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()  # in-flight requests are aborted; their blocks freed

    app = FastAPI(title="pagelab", lifespan=lifespan)
    app.state.backend, app.state.engine = backend, engine
    app.state.metrics = Metrics(engine)

    @app.exception_handler(APIError)
    async def _api_error(_request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = f"{where}: {err['msg']}" if where else err["msg"]
        if err.get("type") == "json_invalid":
            msg = f"the request body is not valid JSON ({err['msg']})"
        return APIError(msg, 400, where or None).response()

    # ------------------------------------------------------------------ checks shared by both APIs
    def check_model(name: str) -> None:
        if name != backend.model_name:
            raise APIError(
                f"The model `{name}` does not exist; this server serves `{backend.model_name}`", 404, "model"
            )

    def params_for(req: _Sampling, prompt_len: int, max_tokens: int | None) -> SamplingParams:
        limit = backend.max_model_len
        if prompt_len == 0:
            raise APIError("the prompt is empty: give at least one token", 400, "prompt")
        if prompt_len >= limit:
            raise APIError(
                f"the prompt has {prompt_len} tokens; this model's maximum context length is {limit} "
                "tokens: shorten the prompt",
                400,
                "prompt",
            )
        max_tokens = limit - prompt_len if max_tokens is None else max_tokens
        if prompt_len + max_tokens > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or the completion.",
                400,
                "max_tokens",
            )
        logprobs = req.num_logprobs
        if logprobs is not None and backend.pace:
            raise APIError(
                "logprobs: the simulated backend draws tokens at random and has no model probabilities; "
                "serve with --backend real for logprobs",
                400,
                "logprobs",
            )
        need = req.n * -(-(prompt_len + max_tokens) // backend.block_size)
        if need > backend.num_gpu_blocks:
            raise APIError(
                f"n={req.n} sequences of up to {prompt_len + max_tokens} tokens need {need} KV blocks "
                f"and the cache holds {backend.num_gpu_blocks}: this request can never run; "
                "lower n or max_tokens",
                400,
                "n",
            )
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                n=req.n,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                seed=req.seed,
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
            )
        except ValueError as e:
            raise APIError(str(e), 400) from None

    def check_ids(ids: list[int]) -> list[int]:
        vocab = backend.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(f"token id {bad[0]} is outside the vocabulary (0 .. {vocab - 1})", 400, "prompt")
        return ids

    async def run(gens: list[Generation], request: Request) -> None:
        """Wait for every generation, aborting all when the client disconnects."""

        async def drain(g):
            async for _ in g.updates():
                pass

        tasks = [asyncio.ensure_future(drain(g)) for g in gens]
        try:
            while True:
                done, _ = await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.ALL_COMPLETED)
                if len(done) == len(tasks):
                    for t in tasks:
                        t.result()  # an APIError (a rejected request) surfaces here
                    return
                if await request.is_disconnected():
                    for g in gens:
                        g.abort()
                    return
        finally:
            for t in tasks:
                t.cancel()

    def usage(gens: list[Generation]) -> dict:
        p = sum(g.num_prompt_tokens for g in gens)
        c = sum(g.num_output_tokens for g in gens)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def envelope(rid: str, created: int, obj: str, choices: list, **extra) -> dict:
        """A response or stream chunk of either API."""
        return {"id": rid, "object": obj, "created": created, "model": backend.model_name, "choices": choices,
                **extra}  # fmt: skip

    def chunker(rid: str, created: int, obj: str, key: str):
        """chunk(index, content, finish_reason, logprobs) for a stream: key "text" (completions) or
        "delta" (chat); index None gives a chunk without choices (the usage chunk's base)."""

        def chunk(index, content, finish, logprobs=None):
            choice = {"index": index, key: content, "logprobs": logprobs, "finish_reason": finish}
            return envelope(rid, created, obj, [] if index is None else [choice])

        return chunk

    def completion_logprobs(g: Generation, i: int, pairs: list | None) -> dict | None:
        """The completions API's logprobs object for sequence i's tokens `pairs` (vLLM's shape: the
        sampled token is in each top_logprobs entry too, which may so hold k + 1 tokens)."""
        if pairs is None:
            return None
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, top in pairs:
            text = backend.token_text(token)
            out["tokens"].append(text)
            out["token_logprobs"].append(top[token])
            out["top_logprobs"].append({backend.token_text(t): v for t, v in top.items()})
            out["text_offset"].append(g.text_offset[i])
            g.text_offset[i] += len(text)
        return out

    def chat_logprobs(g: Generation, i: int, pairs: list | None) -> dict | None:
        """The chat API's logprobs object: per token its text, logprob, UTF-8 bytes and the
        top_logprobs most likely tokens."""
        if pairs is None:
            return None
        k = g.group.sampling_params.logprobs

        def entry(token, value):
            text = backend.token_text(token)
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

        content = []
        for token, top in pairs:
            best = sorted(top.items(), key=lambda kv: -kv[1])[:k]
            content.append(entry(token, top[token]) | {"top_logprobs": [entry(t, v) for t, v in best]})
        return {"content": content}

    def sse(payload: dict | str) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

    async def stream(gens: list[Generation], request: Request, chunk, include_usage: bool, chat: bool):
        """Server-sent events: one chunk per text delta (its choice index), each choice's finish
        reason, then the usage chunk (stream_options.include_usage) and `data: [DONE]`."""
        merged: asyncio.Queue = asyncio.Queue()
        n = gens[0].group.sampling_params.n

        async def pump(k, g):
            try:
                async for item in g.updates():
                    await merged.put((k, g, item))
            except APIError as e:
                await merged.put((k, g, e))
            except Exception as e:  # anything else ends this generation's part of the stream too
                await merged.put((k, g, APIError(f"internal error: {e!r}", 500)))

        tasks = [asyncio.ensure_future(pump(k, g)) for k, g in enumerate(gens)]
        try:
            if chat:
                for k in range(len(gens)):
                    for i in range(n):
                        yield sse(chunk(k * n + i, {"role": "assistant", "content": ""}, None))
            remaining = len(gens)
            while remaining:
                k, g, item = await merged.get()
                if isinstance(item, APIError):
                    yield sse(
                        {"error": {"message": item.message, "type": "BadRequestError", "code": item.status}}
                    )
                    remaining -= 1
                    continue
                if item is None:
                    remaining -= 1
                    for i in range(n):
                        yield sse(chunk(k * n + i, {} if chat else "", g.finish_reason[i]))
                    continue
                i, delta, pairs = item
                logprobs = (chat_logprobs if chat else completion_logprobs)(g, i, pairs)
                yield sse(chunk(k * n + i, {"content": delta} if chat else delta, None, logprobs))
            if include_usage:
                yield sse(chunk(None, None, None) | {"choices": [], "usage": usage(gens)})
            yield sse("[DONE]")
        finally:  # the client went away (the response was cancelled) or we are done
            for g in gens:
                g.abort()
            for t in tasks:
                t.cancel()

    # ------------------------------------------------------------------ routes
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        p = req.prompt
        if isinstance(p, str):
            prompts = [backend.tokenizer.encode(p)]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [check_ids(list(p))]
        elif p and all(isinstance(x, list) for x in p):
            prompts = [check_ids(list(x)) for x in p]
        elif p and all(isinstance(x, str) for x in p):
            prompts = [backend.tokenizer.encode(x) for x in p]
        else:
            raise APIError(
                "prompt must be a string, a list of strings, token ids or lists of token ids", 400, "prompt"
            )
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # the OpenAI API's default
        params = [params_for(req, len(x), max_tokens) for x in prompts]
        gens = [
            Generation(app.state, x, sp, req.stop_strings, req.priority) for x, sp in zip(prompts, params)
        ]
        submitted = []
        try:
            for g in gens:
                g.submit()
                submitted.append(g)
        except APIError:
            for g in submitted:  # all of the request or none of it
                g.abort()
            raise
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        n = req.n

        chunk = chunker(rid, created, "text_completion", "text")

        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream(gens, request, chunk, include, chat=False), media_type="text/event-stream"
            )
        await run(gens, request)
        asked = req.logprobs is not None
        choices = [
            {
                "index": k * n + i,
                "text": g.text[i],
                "logprobs": completion_logprobs(g, i, g.sent_logprobs[i] if asked else None),
                "finish_reason": g.finish_reason[i],
            }
            for k, g in enumerate(gens)
            for i in range(n)
        ]
        return envelope(rid, created, "text_completion", choices, usage=usage(gens))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        check_model(req.model)
        prompt = backend.chat_prompt([m.model_dump() for m in req.messages])
        max_tokens = req.max_completion_tokens or req.max_tokens
        gen = Generation(
            app.state, prompt, params_for(req, len(prompt), max_tokens), req.stop_strings, req.priority
        )
        gen.submit()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        chunk = chunker(rid, created, "chat.completion.chunk", "delta")

        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream([gen], request, chunk, include, chat=True), media_type="text/event-stream"
            )
        await run([gen], request)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": gen.text[i]},
                "logprobs": chat_logprobs(gen, i, gen.sent_logprobs[i] if req.logprobs else None),
                "finish_reason": gen.finish_reason[i],
            }
            for i in range(req.n)
        ]
        return envelope(rid, created, "chat.completion", choices, usage=usage([gen]))

    @app.get("/v1/models")
    async def models():
        card = {
            "id": backend.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "pagelab",
            "root": backend.model_name,
            "parent": None,
            "max_model_len": backend.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"error": f"the engine stopped: {engine.error!r}"}, status_code=503)
        return Response(status_code=200)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        if req.model is not None:
            check_model(req.model)
        if req.messages is not None:
            ids = backend.chat_prompt([m.model_dump() for m in req.messages])
        elif req.prompt is not None:
            ids = backend.tokenizer.encode(req.prompt)
        else:
            raise APIError("give prompt or messages", 400, "prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": backend.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        if req.model is not None:
            check_model(req.model)
        return {"prompt": backend.decode(check_ids(req.tokens))}

    @app.get("/metrics")
    async def metrics():
        body, content_type = app.state.metrics.render()
        return Response(body, media_type=content_type)

    return app
