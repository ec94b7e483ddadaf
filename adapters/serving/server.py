"""Wiring and life cycle of ``infer-os serve``: session, metrics, recording, the app on uvicorn.

Start: the model loads, the engine thread starts, then the port is bound and one line says
where.  Shutdown on SIGINT/SIGTERM (uvicorn's handlers): new requests are refused with a 503 at
once; uvicorn waits up to ``--drain-timeout`` for the connections in flight; then every request
still in the engine is ended (failed: "the server shut down before the request finished"), the
engine thread stops and the recording is written.  A policy failure stops the engine: requests in
flight fail with its reason, the server shuts itself down and the command exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import uvicorn

from adapters.serving.app import build_app
from adapters.serving.chat import chat_renderer
from adapters.serving.metrics import SAMPLE_S, ServeMetrics
from adapters.serving.record import Recorder, engine_counters
from adapters.serving.session import Session, http_status
from sim.errors import UserError


class _Server(uvicorn.Server):
    """uvicorn's server, telling the session when shutdown begins and where it listens."""

    session: Session
    announce = None

    def handle_exit(self, sig, frame) -> None:
        self.session.begin_drain()
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.announce is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.announce(host, port)


def serve(setup, args, variant: str, max_waiting: int, meta: dict, record: Path | None,
          log) -> int:
    recorder = None
    if record is not None:
        if record.exists() and not record.is_dir():
            raise UserError("exists and is not a folder", file=str(record), field="--record")
    scn = setup.scenario
    holder: dict = {}

    def on_step(plan, result, now):
        holder["metrics"].step(plan, result, now)

    def on_end(job, row):
        holder["metrics"].request_ended(job, row)
        if not row["completed"]:
            holder["metrics"].failed(http_status(row["reason"] or "", job.cancelled is not None))
        if recorder is not None:
            recorder.request(job, row)

    session = Session(setup, args.backend, max_waiting=max_waiting, on_step=on_step,
                      on_end=on_end, seed=args.seed)
    if session.tokenizer is None:
        raise UserError("the model has no tokenizer: `infer-os serve` reads and writes text",
                        field="model.spec")
    model_name = args.served_model_name or scn.model.spec
    device = session.raw.report().device_label
    labels = {"model": model_name, "variant": variant, "backend": args.backend,
              "device": device}
    metrics = holder["metrics"] = ServeMetrics(session, labels)
    render, template = chat_renderer(session.tokenizer)
    if record is not None:
        recorder = Recorder(record, args.record_text, meta | {"model": model_name,
                                                              "device": device})
    app = build_app(session, metrics, model_name, render)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=args.drain_timeout, lifespan="on")
    server = _Server(config)
    server.session = session

    def announce(host, port):
        print(f"infer-os: serving {model_name} ({scn.name}/{variant} on {args.backend}, "
              f"{device}) at http://{host}:{port} - dashboard /, metrics /metrics; chat: "
              f"{template}", file=log, flush=True)

    server.announce = announce

    def stopped():  # the engine thread ended: a policy failure (or the shutdown itself)
        if session.error:
            print(f"infer-os: error: {session.error}", file=log, flush=True)
            server.should_exit = True

    session.on_stopped = stopped

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async def sample():
            while True:
                await asyncio.sleep(SAMPLE_S)
                metrics.sample()

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(session.close)
            if recorder is not None:
                recorder.close(engine_counters(session))
                print(f"infer-os: wrote the recording to {record} (`infer-os validate "
                      f"--trace {record}` predicts it)", file=log, flush=True)

    app.router.lifespan_context = lifespan
    session.start()
    # uvicorn handles SIGINT/SIGTERM while it serves, then raises the signal again under the
    # handlers it found: these take it, so that a graceful shutdown exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 1 if session.error else 0
