"""Wiring and life cycle of ``infer-os serve``: session, metrics, recording, the app on uvicorn.

Threads: the engine runs on the main thread (torch's CPU thread pool is a third slower when
driven from another thread: 40 against 59 tok/s for the same run, measured); uvicorn runs on a
second thread, and the signal handlers are ours.  Start: the model loads, uvicorn binds the port
and one line says where.  Shutdown on SIGINT/SIGTERM: new requests are refused with a 503 at
once; uvicorn waits up to ``--drain-timeout`` for the connections in flight; then every request
still in the engine is ended (failed: "the server shut down before the request finished"), the
engine stops and the recording is written.  A policy failure stops the engine: requests in
flight fail with its reason, the server shuts itself down and the command exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from pathlib import Path

import uvicorn

from adapters.serving.app import build_app
from adapters.serving.chat import chat_renderer
from adapters.serving.metrics import SAMPLE_S, ServeMetrics
from adapters.serving.record import Recorder, engine_counters
from adapters.serving.session import Session, http_status
from sim.errors import UserError


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does."""

    announce = None

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

    def announce(host, port):
        print(f"infer-os: serving {model_name} ({scn.name}/{variant} on {args.backend}, "
              f"{device}) at http://{host}:{port} - dashboard /, metrics /metrics; chat: "
              f"{template}", file=log, flush=True)

    server.announce = announce

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
            session.close()  # what is still in flight ends; the engine stops once idle

    app.router.lifespan_context = lifespan
    failed_start: list[BaseException] = []

    def http() -> None:
        try:
            server.run()  # off the main thread, uvicorn installs no signal handlers
        except BaseException as err:  # (a port already taken: SystemExit)
            failed_start.append(err)
        finally:
            session.close()

    def on_signal(sig, frame) -> None:
        session.begin_drain()
        server.handle_exit(sig, frame)  # a second signal forces the exit

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    thread = threading.Thread(target=http, name="infer-os-http", daemon=True)
    thread.start()
    session.run_engine()  # the main thread, until the server closes it or a policy fails
    if session.error:
        print(f"infer-os: error: {session.error}", file=log, flush=True)
        server.should_exit = True
    thread.join(args.drain_timeout + 30)
    if recorder is not None:
        recorder.close(engine_counters(session))
        print(f"infer-os: wrote the recording to {record} (`infer-os validate --trace "
              f"{record}` predicts it)", file=log, flush=True)
    if failed_start and not server.started:
        raise UserError(f"cannot listen on {args.host}:{args.port} (see the message above)",
                        field="--port")
    return 1 if session.error else 0
