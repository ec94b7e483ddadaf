"""``infer-os serve`` under load: the OpenAI-compatible server driven by the official ``openai``
client, against ``infer-os measure`` on the same workload, and ``infer-os validate --trace`` on
what the server recorded; or a ``--soak``: mixed traffic against one server for a bounded time.

    python benchmarks/serve_load.py [--requests 16] [--concurrency 4] [--prompt-tokens 128]
        [--output-tokens 32] [--variant baseline]... [--threads N] [--repeats 1] [--json]
    python benchmarks/serve_load.py --soak MINUTES [--concurrency 4] [--sample-s 60] [--json]

The workload is a temporary scenario: ``smollm2-cpu``'s model, hardware and backend (SmolLM2-135M,
fp32 on the CPU, FP16 KV in blocks of 64 tokens with 64-value quantization groups, ``fp16`` /
``adaptive`` / ``off`` / ``single cpu`` policies and its variants), ``engine.max_batch`` =
concurrency, a closed loop of ``--concurrency`` users, ``--requests`` requests of exactly
``--prompt-tokens`` random prompt tokens and ``--output-tokens`` output tokens.

Load mode, per repeat (server and measure interleaved: server, measure, server, measure, ...):
``infer-os serve SCENARIO --backend torch --variant V --port 0 --record DIR --max-waiting N`` in a
subprocess; once it announces its address, C client threads each send a request as soon as their
previous one ended (seeded random token ids, ``max_tokens`` = O, ``temperature`` 0, ``ignore_eos``,
streamed with ``include_usage``).  Client side, per request: TTFT (send -> first non-empty text
chunk), TPOT ((end - first chunk) / (tokens - 1)), e2e, tokens (the usage the server reports) and
errors (an exception, or a token count other than O).  Throughput = output tokens / wall time from
the first send to the last end.  Then SIGTERM: the server must exit 0 and leave a complete
recording (``serve.json``), which ``infer-os validate --trace DIR --cost-model roofline --json``
predicts (and ``calibrated`` too when a calibration profile is cached, bounded to 2 minutes).
``infer-os measure SCENARIO --backend torch --variant V --json`` runs the same scenario in-process.
Medians over the repeats are quoted.

Soak mode: one server (``engine.max_batch`` = C) for ``--soak`` minutes of mixed traffic from C
closed-loop threads: prompts of 16-256 tokens, outputs of 8-64, streamed or not, completions (token
ids) or chat (random words), temperature 0 or 0.7, EOS honoured or ignored.  Every ``--sample-s``
seconds: the server's RSS (``/proc/PID/status`` VmRSS) and ``/metrics`` (``kv_cache_bytes`` summed,
``request_success_total`` summed).  No request may be lost: each ends with a response or an error;
at the end the server's success counter must equal the client's completed count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
VOCAB = 49152  # SmolLM2's vocabulary; ids below 256 (special and byte tokens) are not sent
# smollm2-cpu's variants (scenarios/smollm2-cpu.yaml)
VARIANTS = {
    "baseline": {},
    "int8-kv": {"policies.tiering": {"kind": "uniform", "precision": "int8"}},
    "int4-kv": {"policies.tiering": {"kind": "uniform", "precision": "int4"}},
    "progressive": {"policies.tiering": {"kind": "progressive"}},
    "spec-ngram": {"policies.speculation": {"kind": "dynamic"}},
    # not in smollm2-cpu: both at once, for the soak
    "progressive-spec": {"policies.tiering": {"kind": "progressive"},
                         "policies.speculation": {"kind": "dynamic"}},
}
ANNOUNCE = re.compile(r"infer-os: serving .* at (http://\S+)")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
CALIBRATED_TIMEOUT_S = 120.0
WORDS = ("the king and queen of a castle in the north sent word to their people that a storm "
         "was coming over the hills tonight and every house should keep its fire lit until the "
         "morning bell rang twice across the quiet river valley").split()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bounded(lo: float, hi: float, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo:g}..{hi:g}")
        return value
    return parse


def cli() -> list[str]:
    """``infer-os`` as this interpreter runs it (the subprocess's pid is the server's)."""
    return [sys.executable, "-c", "import sys; from sim.cli import main; sys.exit(main())"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- the scenario ------------------------------------------------------------------------------
def write_scenario(path: Path, args, soak: bool = False) -> None:
    import yaml

    doc = {
        "name": "serve-load",
        "description": "benchmarks/serve_load.py: a closed loop of fixed-length requests",
        "seed": 0,
        "model": {"spec": MODEL},
        "hardware": "cpu-2core-avx512",
        "cost_models": ["roofline"],
        "workload": {
            "arrival": {"kind": "closed", "concurrency": args.concurrency},
            "num_requests": args.requests,
            "prompt_tokens": {"kind": "fixed", "value": args.prompt_tokens},
            "output_tokens": {"kind": "fixed", "value": args.output_tokens},
            "prompt_text": "random",
        },
        "engine": {"max_batch": args.concurrency, "block_tokens": 64, "kv_quant_group": 64,
                   "tiering_interval_steps": 8, "max_draft_len": 4},
        "speculation": {"draft_source": "ngram", "draft_layers": 8},
        "backend": {"device": "cpu", "dtype": "float32", "kv_dtype": "float16"}
        | ({"threads": args.threads} if args.threads else {}),
        "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "adaptive"},
                     "speculation": {"kind": "off"},
                     "scheduling": {"kind": "single", "device": "cpu"}},
        "variants": VARIANTS,
    }
    if soak:  # the server's limits: prompts up to 256 and outputs up to 64 tokens
        doc["workload"].update({"prompt_tokens": {"kind": "fixed", "value": 256},
                                "output_tokens": {"kind": "fixed", "value": 64}})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# -- the server --------------------------------------------------------------------------------
class Server:
    """``infer-os serve`` in a subprocess; its stderr is read by a thread (kept in ``lines``)."""

    def __init__(self, scenario: Path, variant: str, record: Path, max_waiting: int):
        cmd = cli() + ["serve", str(scenario), "--backend", "torch", "--variant", variant,
                       "--port", "0", "--record", str(record), "--max-waiting", str(max_waiting)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = ANNOUNCE.search(line)
            if m and self.url is None:
                self.url = m.group(1).rstrip(".,;")
                self._ready.set()
        self._ready.set()  # the process ended

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        if not self._ready.wait(timeout_s) or self.url is None:
            self.kill()
            raise RuntimeError(f"the server did not announce itself within {timeout_s:g} s "
                               f"(exit {self.proc.poll()}): {self.tail()}")
        return self.url

    def tail(self, n: int = 8) -> str:
        return " | ".join(self.lines[-n:])

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None when it had to be killed, seconds to exit)."""
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return code, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self) -> int | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def scrape(url: str) -> dict[str, float]:
    """``/metrics``: each metric's samples summed over their labels."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def check_recording(folder: Path, expect_completed: int | None) -> str:
    marker = folder / "serve.json"
    if not marker.is_file():
        return f"no serve.json in {folder}"
    meta = json.loads(marker.read_text())
    missing = [f for f in ("trace.csv", "requests.csv") if not (folder / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    done = meta.get("num_completed")
    if expect_completed is not None and done != expect_completed:
        return f"serve.json num_completed {done} != {expect_completed} completed client-side"
    return "ok"


# -- the client --------------------------------------------------------------------------------
def client(url: str, timeout_s: float):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout_s)


def prompt_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(256, VOCAB) for _ in range(n)]


def stream_request(api, rng: random.Random, prompt_tokens: int, output_tokens: int) -> dict:
    """One streamed completion of random token ids; client-side times in seconds."""
    prompt = prompt_ids(rng, prompt_tokens)
    t0 = time.perf_counter()
    first = end = None
    tokens, err = None, None
    try:
        stream = api.completions.create(model=MODEL, prompt=prompt, max_tokens=output_tokens,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        if tokens != output_tokens:
            err = f"{tokens} tokens instead of {output_tokens}"
    except Exception as e:  # an HTTP or stream error: this request failed
        end, err = time.perf_counter(), f"{type(e).__name__}: {e}"
    row = {"start": t0, "end": end, "tokens": tokens or 0, "error": err,
           "ttft_s": None if first is None else first - t0, "e2e_s": end - t0, "tpot_s": None}
    if first is not None and tokens and tokens > 1:
        row["tpot_s"] = (end - first) / (tokens - 1)
    return row


def drive(url: str, args, seed: int) -> dict:
    """The closed loop: ``concurrency`` threads, ``requests`` requests in all."""
    api = client(url, args.request_timeout_s)
    lock = threading.Lock()
    rows: list[dict] = []
    next_i = [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                if i >= args.requests:
                    return
                next_i[0] += 1
            row = stream_request(api, random.Random(seed * 100_003 + i), args.prompt_tokens,
                                 args.output_tokens)
            with lock:
                rows.append(row)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client_cpu_s = time.process_time() - cpu0  # this process's CPU: the client's share
    ok = [r for r in rows if r["error"] is None]
    wall = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return summary(sum(r["tokens"] for r in ok), wall,
                   [r["ttft_s"] for r in ok if r["ttft_s"] is not None],
                   [r["tpot_s"] for r in ok if r["tpot_s"] is not None],
                   [r["e2e_s"] for r in ok], len(rows) - len(ok),
                   [r["error"] for r in rows if r["error"]]) | {"client_cpu_s": client_cpu_s}


def summary(tokens: int, wall_s: float, ttft, tpot, e2e, errors: int, why=()) -> dict:
    return {"throughput_tok_s": tokens / wall_s if wall_s > 0 else None, "wall_s": wall_s,
            "output_tokens": tokens,
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "tpot_p50_ms": ms(percentile(tpot, 50)), "tpot_p99_ms": ms(percentile(tpot, 99)),
            "e2e_p50_ms": ms(percentile(e2e, 50)), "errors": errors, "error_detail": list(why)[:5]}


def ms(x: float | None) -> float | None:
    return None if x is None else 1e3 * x


# -- measure and validate ----------------------------------------------------------------------
def run_cli(argv: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    try:
        proc = subprocess.run(cli() + argv, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or ""
    return proc.returncode, proc.stdout, proc.stderr


def measure(scenario: Path, variant: str) -> dict:
    code, out, err = run_cli(["measure", str(scenario), "--backend", "torch", "--variant",
                              variant, "--json"], 900)
    if code != 0:
        raise RuntimeError(f"measure exited {code}: {err[-1500:]}")
    m = json.loads(out)["runs"][0]["metrics"]
    return {"throughput_tok_s": m["throughput_tok_s"], "wall_s": m["makespan_s"],
            "output_tokens": m["output_tokens"],
            "ttft_p50_ms": ms(m["ttft_s"]["p50"]), "ttft_p99_ms": ms(m["ttft_s"]["p99"]),
            "tpot_p50_ms": ms(m["tpot_s"]["p50"]), "tpot_p99_ms": ms(m["tpot_s"]["p99"]),
            "e2e_p50_ms": ms(m["e2e_s"]["p50"]),
            "errors": m["num_failed"] + m.get("num_rejected", 0), "error_detail": [],
            "load_1min": os.getloadavg()[0]}


VALIDATE_METRICS = ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50")


def calibration_cached(threads: int | None) -> bool:
    """Whether a calibration profile for this model, dtype and thread count is cached (else
    ``validate --cost-model calibrated`` would calibrate first, minutes of CPU)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infer-os" \
        / "calibration"
    return any(cache.glob(f"torch-smollm2-135m-float32-t{threads}-*.yaml"))


def validate(record: Path, cost_model: str, timeout_s: float = 300) -> dict:
    code, out, err = run_cli(["validate", "--trace", str(record), "--cost-model", cost_model,
                              "--json"], timeout_s)
    if code is None:
        return {"error": f"timed out after {timeout_s:g} s"}
    if code != 0:
        return {"error": f"exited {code}: {(err or out).strip()[-600:]}"}
    run = json.loads(out)["runs"][0]
    return {m: run["relative_error"].get(m) for m in VALIDATE_METRICS} | {
        "predicted_tok_s": run["predicted"].get("throughput_tok_s"),
        "measured_tok_s": run["measured"].get("throughput_tok_s")}


# -- load mode ---------------------------------------------------------------------------------
def serve_once(scenario: Path, variant: str, args, seed: int, work: Path, cost_models) -> dict:
    record = work / f"record-{variant}-{seed}"
    server = Server(scenario, variant, record, args.requests)
    try:
        t0 = time.perf_counter()
        url = server.wait_ready()
        start_s = time.perf_counter() - t0
        res = drive(url, args, seed)
        success = scrape(url).get("infer_os:request_success_total", 0.0)
    finally:
        code, stop_s = server.stop()
    completed = args.requests - res["errors"]
    res.update({"start_s": start_s, "stop_s": stop_s, "exit_code": code,
                "load_1min": os.getloadavg()[0],
                "metrics_success": success,
                "recording": check_recording(record, completed), "validate": {}})
    if success != completed:
        res["error_detail"].append(f"/metrics request_success_total {success:g} != "
                                   f"{completed} completed")
    if code != 0:
        res["error_detail"].append(f"server exit code {code}: {server.tail()}")
    if res["recording"] == "ok":
        for cm in cost_models:
            res["validate"][cm] = validate(record, cm, CALIBRATED_TIMEOUT_S
                                           if cm == "calibrated" else 300)
    return res


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def load_mode(args) -> dict:
    cost_models = ["roofline"] + (["calibrated"] if calibration_cached(args.threads) else [])
    if len(cost_models) == 1:
        log("no cached calibration profile for this thread count: validating with the "
            "roofline cost model only")
    doc = {"mode": "load", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "args": {k: v for k, v in vars(args).items() if k != "json"}, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        scenario = work / "serve-load.yaml"
        write_scenario(scenario, args)
        for variant in args.variant:
            runs = {"server": [], "measure": []}
            for rep in range(args.repeats):
                t = time.perf_counter()
                s = serve_once(scenario, variant, args, rep, work, cost_models)
                runs["server"].append(s)
                log(f"{variant} repeat {rep + 1}: server {fmt(s['throughput_tok_s'], '.2f')} "
                    f"tok/s, {s['errors']} errors, exit {s['exit_code']}, recording "
                    f"{s['recording']} ({time.perf_counter() - t:.0f} s, "
                    f"load {s['load_1min']:.1f})")
                if args.no_measure:
                    continue
                t = time.perf_counter()
                m = measure(scenario, variant)
                runs["measure"].append(m)
                log(f"{variant} repeat {rep + 1}: measure {m['throughput_tok_s']:.2f} tok/s "
                    f"({time.perf_counter() - t:.0f} s, load {m['load_1min']:.1f})")
            doc["variants"][variant] = aggregate(runs, cost_models)
    return doc


KEYS = ("throughput_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
        "e2e_p50_ms")


def aggregate(runs: dict, cost_models) -> dict:
    out = {"runs": runs}
    for side in ("server", "measure"):
        rs = runs[side]
        if rs:
            out[side] = {k: median(r[k] for r in rs) for k in KEYS} | {
                "errors": sum(r["errors"] for r in rs)}
    srv, mea = out.get("server"), out.get("measure")
    if srv and mea and srv["throughput_tok_s"] and mea["throughput_tok_s"]:
        out["overhead_pct"] = 100 * (1 - srv["throughput_tok_s"] / mea["throughput_tok_s"])
        # per repeat: each server run against the measure run right after it
        out["overhead_pct_per_repeat"] = [
            100 * (1 - s["throughput_tok_s"] / m["throughput_tok_s"])
            for s, m in zip(runs["server"], runs["measure"])]
    out["validate"] = {}
    for cm in cost_models:
        docs = [r["validate"].get(cm, {}) for r in runs["server"]]
        errs = [d["error"] for d in docs if "error" in d]
        out["validate"][cm] = {m: median(d.get(m) for d in docs if "error" not in d)
                               for m in VALIDATE_METRICS} | ({"errors": errs} if errs else {})
    return out


def print_load(doc: dict) -> None:
    a = doc["args"]
    print(f"serve_load: {a['requests']} requests, concurrency {a['concurrency']}, torch "
          f"threads {a.get('threads') or 'default'}, prompt "
          f"{a['prompt_tokens']} / output {a['output_tokens']} tokens, {a['repeats']} repeat(s), "
          f"medians ({doc['date']})")
    print()
    print("| variant | side | tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms "
          "| e2e p50 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, v in doc["variants"].items():
        for side in ("server", "measure"):
            if side not in v:
                continue
            r = v[side]
            print(f"| {variant} | {side} | {fmt(r['throughput_tok_s'], '.2f')} | "
                  + " | ".join(fmt(r[k]) for k in KEYS[1:]) + f" | {r['errors']} |")
    print()
    for variant, v in doc["variants"].items():
        if "overhead_pct" in v:
            per = ", ".join(f"{x:+.1f} %" for x in v["overhead_pct_per_repeat"])
            print(f"{variant}: server throughput overhead vs measure {v['overhead_pct']:+.1f} % "
                  f"(of the medians; per repeat {per}; goal <= 10 % at concurrency 4)")
        for s in v["runs"]["server"]:
            extra = "; ".join(s["error_detail"])
            print(f"  server run: load {s['load_1min']:.1f}, client CPU "
                  f"{s['client_cpu_s']:.1f} s in {s['wall_s']:.1f} s, start {s['start_s']:.1f} s, "
                  f"stop {s['stop_s']:.1f} s, exit "
                  f"{s['exit_code']}, /metrics success {s['metrics_success']:g}, recording "
                  f"{s['recording']}" + (f"; {extra}" if extra else ""))
        for cm, errs in v["validate"].items():
            cells = ", ".join(f"{m} {fmt(None if errs[m] is None else 100 * errs[m], '+.1f')} %"
                              for m in VALIDATE_METRICS)
            fail = f" (failed: {'; '.join(errs['errors'])})" if "errors" in errs else ""
            print(f"{variant}: validate --trace --cost-model {cm}, median signed error: "
                  f"{cells}{fail}")


# -- soak mode ---------------------------------------------------------------------------------
def soak_request(api, rng: random.Random, stats: dict, lock: threading.Lock) -> None:
    n_prompt, n_out = rng.randint(16, 256), rng.randint(8, 64)
    chat, stream = rng.random() < 0.3, rng.random() < 0.5
    kw = {"model": MODEL, "max_tokens": n_out, "temperature": rng.choice((0.0, 0.7)),
          "stream": stream}
    if rng.random() < 0.5:
        kw["extra_body"] = {"ignore_eos": True}
    if stream:
        kw["stream_options"] = {"include_usage": True}
    kind = ("chat" if chat else "completion") + ("-stream" if stream else "")
    with lock:
        stats["sent"] += 1
        stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
    try:
        if chat:
            # roughly one token a word, less the template's own tokens
            text = " ".join(rng.choice(WORDS) for _ in range(max(n_prompt - 12, 4)))
            resp = api.chat.completions.create(messages=[{"role": "user", "content": text}],
                                               **kw)
        else:
            resp = api.completions.create(prompt=prompt_ids(rng, n_prompt), **kw)
        finish = None
        if stream:
            for chunk in resp:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        else:
            finish = resp.choices[0].finish_reason
        if finish is None:
            raise RuntimeError("no finish_reason")
        with lock:
            stats["completed"] += 1
    except Exception as e:
        with lock:
            stats["failed"] += 1
            why = f"{type(e).__name__}: {str(e)[:200]}"
            stats["errors"][why] = stats["errors"].get(why, 0) + 1


def soak_mode(args) -> dict:
    doc = {"mode": "soak", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "args": {k: v for k, v in vars(args).items() if k != "json"}, "samples": []}
    stats = {"sent": 0, "completed": 0, "failed": 0, "errors": {}, "by_kind": {}}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        work = Path(tmp)
        scenario, record = work / "serve-soak.yaml", work / "record"
        write_scenario(scenario, args, soak=True)
        variant = args.variant[0]
        server = Server(scenario, variant, record, max(4 * args.concurrency, 16))
        try:
            url = server.wait_ready()
            api = client(url, args.request_timeout_s)
            t0 = time.monotonic()
            deadline = t0 + 60 * args.soak
            stop = threading.Event()

            def sample(label: str) -> dict:
                m = scrape(url)
                s = {"t_s": time.monotonic() - t0, "label": label, "rss": server.rss_bytes(),
                     "kv_bytes": m.get("infer_os:kv_cache_bytes"),
                     "success": m.get("infer_os:request_success_total", 0.0),
                     "failure": m.get("infer_os:request_failure_total", 0.0),
                     "running": m.get("infer_os:num_requests_running"),
                     "waiting": m.get("infer_os:num_requests_waiting")}
                with lock:
                    s |= {"sent": stats["sent"], "completed": stats["completed"],
                          "failed": stats["failed"]}
                doc["samples"].append(s)
                log(f"  {s['t_s']:6.0f} s  RSS {mb(s['rss'])} MB, KV {mb(s['kv_bytes'], '.2f')} "
                    f"MB, sent {s['sent']}, completed {s['completed']}, failed {s['failed']}, "
                    f"/metrics success {s['success']:g}")
                return s

            def worker(k: int) -> None:
                rng = random.Random(1_000 + k)
                while not stop.is_set() and time.monotonic() < deadline:
                    soak_request(api, rng, stats, lock)

            sample("start")
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
            for t in threads:
                t.start()
            next_t = t0 + args.sample_s
            while time.monotonic() < deadline:
                time.sleep(max(0.0, min(next_t, deadline) - time.monotonic()))
                if time.monotonic() >= next_t:
                    sample("load")
                    next_t += args.sample_s
            for t in threads:  # each ends its request in flight (bounded by the client timeout)
                t.join()
            time.sleep(3.0)  # idle: nothing in flight
            sample("idle")
            final = doc["samples"][-1]
        finally:
            code, stop_s = server.stop()
        doc |= {"stats": stats, "exit_code": code, "stop_s": stop_s,
                "recording": check_recording(record, None), "server_tail": server.tail(4)}
        if doc["recording"] == "ok":
            doc["validate_roofline"] = validate(record, "roofline")
    first = next((s for s in doc["samples"] if s["t_s"] >= args.sample_s * 0.99), None)
    doc["rss_growth_pct"] = (100 * (final["rss"] - first["rss"]) / first["rss"]
                             if first and first["rss"] and final["rss"] else None)
    doc["lost"] = stats["sent"] - stats["completed"] - stats["failed"]
    doc["metrics_match"] = final["success"] == stats["completed"]
    return doc


def mb(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x / 1e6, spec)


def print_soak(doc: dict) -> None:
    a, st = doc["args"], doc["stats"]
    print(f"serve_load --soak {a['soak']:g}: concurrency {a['concurrency']}, variant "
          f"{a['variant'][0]}, a sample every {a['sample_s']:g} s ({doc['date']})")
    print()
    print("| t (s) | when | RSS MB | KV bytes (MB) | sent | completed | failed "
          "| /metrics success | /metrics failure | running | waiting |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in doc["samples"]:
        print(f"| {s['t_s']:.0f} | {s['label']} | {mb(s['rss'])} | {mb(s['kv_bytes'], '.3f')} | "
              f"{s['sent']} | {s['completed']} | {s['failed']} | {s['success']:g} | "
              f"{s['failure']:g} | {fmt(s['running'], 'g')} | {fmt(s['waiting'], 'g')} |")
    print()
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(st["by_kind"].items()))
    print(f"requests sent {st['sent']} ({kinds}): completed {st['completed']}, failed "
          f"{st['failed']}, lost {doc['lost']}")
    for why, n in st["errors"].items():
        print(f"  error x{n}: {why}")
    g = doc["rss_growth_pct"]
    print(f"RSS growth after the first sample under load: {fmt(g, '+.2f')} %; /metrics "
          f"request_success_total {'==' if doc['metrics_match'] else '!='} completed "
          f"({doc['samples'][-1]['success']:g} vs {st['completed']}); KV bytes when idle "
          f"{mb(doc['samples'][-1]['kv_bytes'], '.3f')} MB")
    print(f"server exit {doc['exit_code']} after SIGTERM ({doc['stop_s']:.1f} s), recording "
          f"{doc['recording']}")
    v = doc.get("validate_roofline")
    if v:
        cells = v["error"] if "error" in v else ", ".join(
            f"{m} {fmt(None if v[m] is None else 100 * v[m], '+.1f')} %" for m in VALIDATE_METRICS)
        print(f"validate --trace --cost-model roofline: {cells}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=bounded(1, 512), default=16)
    ap.add_argument("--concurrency", type=bounded(1, 32), default=4,
                    help="closed-loop client threads, also engine.max_batch")
    ap.add_argument("--prompt-tokens", type=bounded(1, 1536), default=128)
    ap.add_argument("--output-tokens", type=bounded(2, 512), default=32)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                    help="a smollm2-cpu variant (repeatable; default baseline; --soak: the first)")
    ap.add_argument("--repeats", type=bounded(1, 20), default=1)
    ap.add_argument("--threads", type=bounded(1, 64),
                    help="backend.threads: torch CPU threads (default: torch's own)")
    ap.add_argument("--no-measure", action="store_true", help="only the server side")
    ap.add_argument("--request-timeout-s", type=bounded(1, 3600, float), default=600.0,
                    help="the client's timeout per request")
    ap.add_argument("--soak", type=bounded(1, 120, float), metavar="MINUTES",
                    help="instead: mixed traffic against one server for MINUTES")
    ap.add_argument("--sample-s", type=bounded(5, 600, float), default=60.0,
                    help="--soak: seconds between samples of RSS and /metrics")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = ap.parse_args()
    args.variant = args.variant or ["baseline"]
    doc = soak_mode(args) if args.soak else load_mode(args)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    elif args.soak:
        print_soak(doc)
    else:
        print_load(doc)
    if args.soak:
        bad = doc["lost"] or doc["exit_code"] != 0 or not doc["metrics_match"]
    else:
        bad = any(r["errors"] or r["exit_code"] != 0 or r["recording"] != "ok"
                  for v in doc["variants"].values() for r in v["runs"]["server"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
