"""What sealing personal data costs the command API: requests/s and latency of sign-ups
with the encryption (this code) and without it (the same API before sealing was added), same
run, same machine, same broker.

Run: python -m proof.bench_erasure [--seconds 15] [--concurrency 32] [--rounds 2]
                                   [--baseline-ref b41d25c] [--out FILE]

It starts its own Kafka and PostgreSQL on free ports in a temporary directory (the
code of `make up`), then, for each round, runs the baseline API and the sealing API
one after the other under the same closed-loop load (proof.bench_load, pinned to one
core): once with a new student per request (every sign-up creates a data key: the
worst case) and once with 200 students signing up again and again (every sign-up
reads its key). The baseline is the command API of `--baseline-ref` (default: the
last commit before sealing), extracted with `git archive` into a temporary directory
and run from there. JSON to stdout and to --out; no assertion: the figures are for
the README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proof.bench_stack import generate, serving
from stack.config import ROOT, StackConfig
from stack.infra import dependencies
from stack.ports import free_port

BASELINE_REF = "b41d25c"  # main just before sealing: sign-ups carry e-mail and name in clear


@contextlib.contextmanager
def _api(config: StackConfig, code_dir: Path, log: Path) -> Iterator[str]:
    port = free_port()
    env = {**config.service_env(), "COMMAND_API_PORT": str(port),
           "PYTHONPATH": str(code_dir), "LOG_LEVEL": "WARNING"}
    url = f"http://127.0.0.1:{port}"
    with serving(f"command API from {code_dir}", [sys.executable, "-m", "command_api"], env,
                 url + "/readyz", log, cwd=code_dir):
        yield url


def _baseline_code(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    ok = [r for r in rows if r[2] == 202]
    latencies = sorted((r[1] - r[0]) * 1000 for r in ok)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"requests": len(rows), "accepted": len(ok),
            "requests_per_second": round(len(ok) / result["seconds"], 1),
            "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proof.bench_erasure")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-erasure-"))
    runs: list[dict[str, Any]] = []
    try:
        baseline = _baseline_code(args.baseline_ref, Path(tempfile.mkdtemp(dir=work)))
        config = StackConfig.on_free_ports(work / "run", admin_token="bench-admin-token",
                                           pseudonym_secret="bench-pseudonym-secret")
        with dependencies(config):
            for rnd in range(args.rounds):
                for variant, code in (("clear (baseline)", baseline), ("sealed", ROOT)):
                    with _api(config, code, work / "api.log") as url:
                        for students in (0, 200):
                            tag = uuid.uuid4().hex[:8]
                            result = generate(url, work / "load.json", args.seconds + 120,
                                              signups=f"bench-{tag}", tag=tag,
                                              concurrency=args.concurrency,
                                              seconds=args.seconds, students=students)
                            runs.append({"round": rnd + 1, "variant": variant,
                                         "students": "new per request" if not students
                                         else f"{students}, repeating",
                                         **_summary(result)})
                            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"figure": "command API sign-ups with and without sealing personal data",
              "seconds_per_run": args.seconds, "concurrency": args.concurrency,
              "baseline_ref": args.baseline_ref, "loadavg_after": os.getloadavg(),
              "runs": runs, "median": _medians(runs)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted({(r["variant"], r["students"]) for r in runs})
    return [{"variant": v, "students": s,
             **{m: statistics.median(r[m] for r in runs
                                     if (r["variant"], r["students"]) == (v, s))
                for m in ("requests_per_second", "p50_ms", "p99_ms")}}
            for v, s in keys]


if __name__ == "__main__":
    main()
