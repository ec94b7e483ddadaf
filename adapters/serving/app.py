"""The HTTP side of ``infer-os serve``: an OpenAI-compatible API over one ``Session``
(FastAPI on uvicorn; no hand-written HTTP).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both streaming with server-sent
events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /metrics`` (Prometheus text
format), ``GET /`` (the live dashboard), ``GET /api/dashboard`` (its data), ``GET /health``.
Errors have OpenAI's shape and status: 400 bad input (bad JSON included), 404 an unknown model,
413 a prompt that does not fit the model's context, 503 with ``Retry-After`` when the server is
full or shutting down, 500 when the engine failed the request.  A streaming response is started
only once the engine has queued the request, so a full queue is a 503, not an error in the
stream; an error after that (the server shutting down) is one ``data: {"error": ...}`` event
before ``[DONE]``.  A client that disconnects mid-stream has its request cancelled.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.serving.protocol import ApiError, ChatRequest, CompletionRequest, single_prompt
from adapters.serving.sampling import Sampling
from adapters.serving.session import Job, ServerBusy, Session

DEFAULT_MAX_TOKENS = 16  # completions, as OpenAI's API
DEFAULT_CHAT_MAX_TOKENS = 256  # chat: OpenAI's is the rest of the context; capped here
RETRY_AFTER_S = 1


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def build_app(session: Session, metrics, model_name: str, chat_template) -> FastAPI:
    """The app over ``session``; ``chat_template(messages) -> prompt text``."""
    app = FastAPI(title="infer-os serve", docs_url=None, redoc_url=None)
    created = int(time.time())
    dashboard = files("adapters.serving") / "static" / "dashboard.html"

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError):
        if not err.counted:
            metrics.failed(err.status)
        headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            message, param = "the body is not valid JSON", None
        else:
            message = first.get("msg", "invalid request").removeprefix("Value error, ")
            param = ".".join(loc) or None
            message = f"{param}: {message}" if param else message
        metrics.failed(400)
        return JSONResponse(ApiError(400, message, param).body(), status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created, "owned_by": "infer-os"}]}

    @app.get("/health")
    async def health():
        if session.error:
            return JSONResponse({"status": "failed", "error": session.error}, status_code=503)
        return {"status": "closing" if session.closing else "ok",
                "in_flight": session.num_in_flight}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return Response(dashboard.read_text(encoding="utf-8"), media_type="text/html")

    @app.get("/static/plotly.min.js")
    async def plotly_js():
        return FileResponse(_plotly_js(), media_type="text/javascript")

    @app.get("/api/dashboard")
    async def dashboard_data():
        return metrics.dashboard()

    def job_for(req, prompt, max_tokens: int | None, default_max: int) -> Job:
        if req.model != model_name:
            raise ApiError(404, f"The model `{req.model}` does not exist (this server serves "
                           f"`{model_name}`)", "model", "model_not_found")
        if isinstance(prompt, str):
            if session.tokenizer is None:
                raise ApiError(400, "this model has no tokenizer: send the prompt as token ids",
                               "prompt")
            ids = session.tokenizer.encode(prompt)
        else:
            ids = prompt
            vocab = session.raw.model.cfg.vocab
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"token ids are 0 to {vocab - 1}", "prompt")
        if not ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        room = session.max_context - len(ids)
        if room < 1:
            raise ApiError(413, f"the prompt has {len(ids)} tokens; this model's context is "
                           f"{session.max_context} tokens", "prompt", "context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens {max_tokens} + {len(ids)} prompt tokens exceed "
                           f"this model's context of {session.max_context} tokens",
                           "max_tokens", "context_length_exceeded")
        temperature = req.temperature
        return Job(ids, max_tokens or min(default_max, room),
                   Sampling(temperature, req.top_p, req.top_k, req.seed),
                   req.stop if isinstance(req.stop, tuple) else (),
                   req.ignore_eos, text_prompt=prompt if isinstance(prompt, str) else None)

    async def run(job: Job, request: Request, chunk, final, stream: bool, include_usage: bool):
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            session.submit(job)
        except ServerBusy as err:
            raise ApiError(503, f"the server cannot take the request now: {err}",
                           retry_after_s=RETRY_AFTER_S) from None
        first = await job.events.get()
        if first[0] == "error":
            raise ApiError(first[1], first[2], retry_after_s=RETRY_AFTER_S
                           if first[1] == 503 else None, counted=True)
        if not stream:
            text = []
            while True:
                event = await job.events.get()
                if event[0] == "delta":
                    text.append(event[1])
                elif event[0] == "done":
                    return final("".join(text), event[1], event[2])
                else:
                    raise ApiError(event[1], event[2], counted=True)
        return StreamingResponse(_events(job, chunk, include_usage), media_type=
                                 "text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _events(job: Job, chunk, include_usage: bool):
        try:
            while True:
                event = await job.events.get()
                if event[0] == "delta":
                    if event[1]:
                        yield _sse(chunk(event[1], None))
                elif event[0] == "done":
                    yield _sse(chunk("", event[1]))
                    if include_usage:
                        yield _sse(chunk(None, None, event[2]))
                    break
                else:
                    yield _sse(ApiError(event[1], event[2]).body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            if job.ended_at is None:  # the client went away
                session.cancel(job, "the client disconnected")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        job = job_for(req, single_prompt(req), req.max_tokens, DEFAULT_MAX_TOKENS)
        rid, t = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text, reason, usage=None):
            choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                "finish_reason": reason}]
            return {"id": rid, "object": "text_completion", "created": t, "model": model_name,
                    "choices": choices} | ({"usage": usage} if usage else {})

        def final(text, reason, usage):
            return {"id": rid, "object": "text_completion", "created": t, "model": model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": reason}], "usage": usage}

        return await run(job, request, chunk, final, req.stream,
                         bool(req.stream_options and req.stream_options.include_usage))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        prompt = chat_template([{"role": m.role, "content": m.text()} for m in req.messages])
        job = job_for(req, prompt, req.max_completion_tokens or req.max_tokens,
                      DEFAULT_CHAT_MAX_TOKENS)
        rid, t = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        started = [False]

        def chunk(text, reason, usage=None):
            if text is None:
                choices = []
            else:
                delta = {} if reason else {"content": text}
                if not started[0]:
                    delta, started[0] = {"role": "assistant", **delta}, True
                choices = [{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": reason}]
            return {"id": rid, "object": "chat.completion.chunk", "created": t,
                    "model": model_name, "choices": choices} | ({"usage": usage} if usage
                                                                 else {})

        def final(text, reason, usage):
            return {"id": rid, "object": "chat.completion", "created": t, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": reason}], "usage": usage}

        return await run(job, request, chunk, final, req.stream,
                         bool(req.stream_options and req.stream_options.include_usage))

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
