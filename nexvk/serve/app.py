"""The OpenAI-compatible HTTP API over an Engine: /v1/models, /v1/chat/completions,
/v1/completions (JSON, or server-sent events with "stream": true) and /health.

Requests are checked by pydantic models; a malformed one, a setting nexvk does not implement
or a prompt too long for a sequence gets HTTP 400 with an OpenAI-style JSON error. Each
request waits for its events from the engine's worker thread on an asyncio queue; a client
that disconnects cancels its request, which frees its sequence.
"""
import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

POLL_S = 0.25  # how often a waiting request checks that its client is still there


class _Params(BaseModel):
    """The sampling and length settings both endpoints take (OpenAI's names and defaults),
    and those nexvk refuses unless they keep their no-op values."""
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict] = None
    logprobs: Union[bool, int, None] = None
    user: Optional[str] = None

    def unsupported(self):
        """Names of the settings given that nexvk does not implement."""
        asked = {"n": self.n != 1, "presence_penalty": self.presence_penalty != 0,
                 "frequency_penalty": self.frequency_penalty != 0,
                 "logit_bias": bool(self.logit_bias), "logprobs": bool(self.logprobs)}
        return [k for k, v in asked.items() if v]


class _Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[dict]]


class ChatRequest(_Params):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(_Params):
    prompt: Union[str, list[int]]
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False

    def unsupported(self):
        return super().unsupported() + (["echo"] if self.echo else [])


def _error(status, message, code=None, param=None):
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}})


class _Refused(Exception):
    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def create_app(engine, model_name):
    """The FastAPI app over a (not yet started) Engine; the app starts and stops it."""

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="nexvk", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        e = exc.errors()[0] if exc.errors() else {}
        if e.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
        return _error(400, f"{where}: {e.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(_Refused)
    async def _refused(request, exc):
        return _error(400, str(exc), code=exc.code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "slots": engine.n_parallel, "busy": engine.busy(),
                "queued": engine.pending.qsize(), "cancelled": engine.cancelled}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "nexvk"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HTTPRequest):
        messages = [m.model_dump() for m in body.messages]
        ids = _checked(lambda: engine.tok.encode_chat(messages))
        body.max_tokens = body.max_completion_tokens or body.max_tokens
        return await _respond(body, ids, http, "chat.completion", "chatcmpl")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        p = body.prompt
        ids = p if isinstance(p, list) else _checked(lambda: engine.tok.encode(p))
        if isinstance(p, list) and any(not 0 <= t < engine.model.arch.vocab_size for t in p):
            raise _Refused(f"prompt token ids must be in [0, {engine.model.arch.vocab_size})")
        return await _respond(body, ids, http, "text_completion", "cmpl")

    async def _respond(body, ids, http, kind, prefix):
        if body.unsupported():
            raise _Refused(f"not supported by nexvk: {', '.join(body.unsupported())}",
                           code="unsupported_parameter")
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event):  # from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed (shutdown)
                pass

        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        req = _checked(lambda: engine.submit(ids, body.max_tokens, emit, body.temperature,
                                             body.top_p, body.seed, stop),
                       code="context_length_exceeded")
        head = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind,
                "created": int(time.time()), "model": model_name}
        chat = kind == "chat.completion"
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(req, events, head, chat, usage),
                                     media_type="text/event-stream")
        text, reason, use = [], None, req.usage()
        async for ev in _events(req, events, http):
            if ev[0] == "text":
                text.append(ev[1])
            elif ev[0] == "error":
                return _error(500, ev[1], code="generation_failed")
            else:
                _, reason, use = ev
        out = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": out},
                   "finish_reason": reason} if chat else
                  {"index": 0, "text": out, "finish_reason": reason, "logprobs": None})
        return {**head, "choices": [choice], "usage": use}

    return app


def _checked(call, code=None):
    """call(), its ValueError as an HTTP 400."""
    try:
        return call()
    except ValueError as e:
        raise _Refused(str(e), code) from None


async def _events(req, events, http=None):
    """The request's events until its last; the request is cancelled when this ends early.
    http: the request to poll for a client that disconnects while the handler waits (a
    streaming response is closed by Starlette instead, when a write fails: its
    http.is_disconnected() no longer sees the connection once the handler has returned)."""
    loop = asyncio.get_running_loop()
    polled = loop.time()
    try:
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), POLL_S)
            except asyncio.TimeoutError:
                ev = None
            if http is not None and loop.time() - polled >= POLL_S:
                polled = loop.time()
                if await http.is_disconnected():
                    return
            if ev is None:
                continue
            yield ev
            if ev[0] != "text":
                return
    finally:
        req.cancel()  # a no-op once the request has finished


async def _sse(req, events, head, chat, include_usage):
    """Server-sent events in OpenAI's chunk format, then [DONE]."""
    kind = head["object"] + (".chunk" if chat else "")

    def chunk(piece, reason=None, first=False):
        if chat:
            delta = ({"role": "assistant", "content": piece} if first else
                     {} if reason else {"content": piece})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}
        return _data({**head, "object": kind, "choices": [choice]})

    if chat:
        yield chunk("", first=True)
    async for ev in _events(req, events):
        if ev[0] == "text":
            yield chunk(ev[1])
        elif ev[0] == "error":
            yield _data({"error": {"message": ev[1], "type": "server_error",
                                   "code": "generation_failed"}})
        else:
            yield chunk("", reason=ev[1])
            if include_usage:
                yield _data({**head, "object": kind, "choices": [], "usage": ev[2]})
    yield "data: [DONE]\n\n"


def _data(obj):
    return f"data: {json.dumps(obj)}\n\n"


def serve(model, n_parallel, host="127.0.0.1", port=8080, model_name="nexvk", log_level="info"):
    """Run the server until interrupted."""
    import uvicorn
    from nexvk.serve.engine import Engine
    app = create_app(Engine(model, n_parallel), model_name)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
