"""Replay, figure 4: `python -m proof.bench_replay` alone, or `measure` from `proof.bench`.

Against the same event log, back to back:
1. the plain confluent-kafka consume-and-decode loop (`bench_kafka.consume_and_decode`):
   the baseline;
2. a replay with one worker (`projections.replay.rebuild`, in this process, swap
   included): goal >= 0.8x the baseline;
3. a replay with two workers, the same way: goal >= 1.6x one worker on two cores;
4. `python -m projections.replay --workers 2` SIGKILLed once half the log is in the
   shadow copies, then run again, which goes on from there: the two together against
   an uninterrupted run of the same command, goal <= 1.2x;
5. with a query API given: its p99, one request at a time (GET /stats, a course's
   stats, a sign-up), idle and then during a two-worker `python -m projections.replay`:
   goal <= 2x. Beside it, the run-queue wait (schedstat) of the query API's process (found
   by its port when not given) and of its PostgreSQL backends, and the backends' wait
   events sampled from pg_stat_activity: where a slow request's time went.
Steps 1 to 3 are measured ROUNDS times, alternating (plain, one worker, two workers),
step 4 is RESUME_ROUNDS pairs, and each is the median of its rounds, every round kept
beside it: on this two-core machine one replay of the same log took 11 to 17 s from run to run,
as much as the gaps the goals draw.
Every replay swaps its views in, as `make replay` does, and the next measurement waits
for the query API's re-read of the swapped views (`Settle`). Each measured replay also
starts on quiet views (`quiet_views`: a VACUUM ANALYZE of the live views, once no other
is running), as the first one did not: a replay's swap waits for an autovacuum of a view
(`Replay._wait_for_maintenance`), and the million rows the live projector or the last
swap brought in start one within a minute, so whichever replay came after that would
carry a wait the others did not. The throughput figures (1 to 4)
run the replay at niceness 0 (REPLAY_NICE=0), the baseline's: on a machine busy with
other work, a niced replay (and its niced PostgreSQL backends) would measure the
scheduler's preference for that other work, not the replay. Figure 5 runs it as `make
replay` does, niced (REPLAY_NICE's default), since that is what keeps the query API fast.

Alone, it starts a private Kafka and PostgreSQL on free ports in a temporary directory
(so no synthetic event reaches a real event log), writes --events events (courses, then
decisions, 4 in 5 accepted; `proof.bench_projections`), starts the live projector and
the query API, and writes $RUN_DIR/bench/fig4_replay.json.
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
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from projections import store
from projections.replay import rebuild
from projections.settings import ReplaySettings
from proof import bench_kafka as bk
from proof.bench_stack import results_dir
from stack.config import ROOT, StackConfig
from stack.procs import kill_now, terminate
from stack.waiting import wait_until


def _settings(bootstrap: str, database_url: str, nice: int | None) -> ReplaySettings:
    settings = ReplaySettings(kafka_bootstrap_servers=bootstrap, database_url=database_url,
                              log_level="WARNING")
    return settings if nice is None else settings.model_copy(update={"replay_nice": nice})


def in_process(bootstrap: str, database_url: str, workers: int,
               nice: int | None = 0) -> dict[str, Any]:
    """A replay in this process; `nice` None: REPLAY_NICE's default, as `make replay`."""
    result = rebuild(_settings(bootstrap, database_url, nice), swap=True, progress=False,
                     workers=workers, restart=True)
    return {"workers": workers, "offsets": result.events, "seconds": round(result.seconds, 2),
            "events_per_s": round(result.rate)}


def _command(bootstrap: str, database_url: str, *args: str,
             nice: int | None = 0) -> subprocess.Popen[bytes]:
    """`python -m projections.replay`; `nice` None: REPLAY_NICE as set, else its default."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
           "LOG_LEVEL": "WARNING"}
    if nice is not None:
        env["REPLAY_NICE"] = str(nice)
    return subprocess.Popen([sys.executable, "-m", "projections.replay", "--quiet", *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed: {err.decode()[-2000:]}")


def _share_done(database_url: str) -> float:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT done::float8 / greatest(total, 1) FROM replay_runs"
                           " WHERE projection = 'views' AND total > 0").fetchone()
    return 0.0 if row is None else float(row[0])


class Settle:
    """Waits, after a replay's swap, until the query API has re-read every view into its
    cache (about 3 s of its CPU at a million events, `projections.live`): otherwise that
    re-read runs during whatever is measured next (the two-worker replay after the
    one-worker one, the idle p99 after the resumed replay), and not before the first."""

    def __init__(self, query_url: str | None) -> None:
        self.url = query_url
        self.before = self._refreshes()

    def _refreshes(self) -> float:
        if self.url is None:
            return 0.0
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith('query_api_cache_refreshes_total{scope="everything"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def __call__(self) -> None:
        """After a swap: until the API has refreshed once more than at the last call."""
        if self.url is None:
            return
        deadline = time.monotonic() + 60  # a cache not following the notices: go on
        while (now := self._refreshes()) <= self.before and time.monotonic() < deadline:
            time.sleep(0.1)
        self.before = now


def quiet_views(database_url: str, timeout: float = 300.0) -> None:
    """Until no VACUUM or ANALYZE holds a view, then one VACUUM ANALYZE of every view, so
    that autovacuum has nothing left to start on them before the next measurement."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        store.wait_out_maintenance(conn, "views", timeout, poll=0.2)
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(
            sql.SQL(", ").join(sql.Identifier(name) for name in store.VIEWS)))


def killed_and_resumed(bootstrap: str, database_url: str, workers: int,
                       settle: Settle | None = None) -> dict[str, Any]:
    """An uninterrupted `python -m projections.replay`, then one SIGKILLed at half way and
    run again (without --restart): wall-clock times of the commands, start-up included.
    Both start on quiet views, as every measured replay does (`quiet_views`): the
    uninterrupted run's swap brings in a million rows, whose autovacuum would otherwise
    run beside the killed one."""
    quiet_views(database_url)
    started = time.perf_counter()
    _finish(_command(bootstrap, database_url, "--restart", f"--workers={workers}"))
    whole = time.perf_counter() - started
    if settle is not None:
        settle()
    quiet_views(database_url)

    started = time.perf_counter()
    proc = _command(bootstrap, database_url, "--restart", f"--workers={workers}")
    wait_until(lambda: _share_done(database_url) >= 0.5 or proc.poll() is not None, 600,
               "the replay to reach half way")
    if proc.poll() is not None:
        raise RuntimeError("the replay ended before half way: use a longer log")
    kill_now(proc)
    killed_at = time.perf_counter() - started
    share = _share_done(database_url)
    resumed = time.perf_counter()
    _finish(_command(bootstrap, database_url, f"--workers={workers}"))
    rest = time.perf_counter() - resumed
    if settle is not None:
        settle()
    return {"workers": workers, "uninterrupted_s": round(whole, 2),
            "killed_after_s": round(killed_at, 2), "share_done_at_kill": round(share, 3),
            "resumed_s": round(rest, 2), "total_s": round(killed_at + rest, 2),
            "ratio": round((killed_at + rest) / whole, 3)}


class Prober:
    """GET requests one at a time on a thread, latencies kept, until stopped."""

    def __init__(self, url: str, paths: list[str], headers: dict[str, str],
                 api_pid: int | None = None) -> None:
        self.url, self.paths, self.headers = url, paths, headers
        self.api_pid = api_pid  # the query API's process, for its run-queue wait
        self.latencies: list[float] = []
        self.at: list[float] = []  # when each request started, seconds since __enter__
        self.kinds: list[str] = []  # each request's route: stats, course, signup
        self.errors = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            i = 0
            while not self.halt.is_set():
                path = self.paths[i % len(self.paths)]
                i += 1
                started = time.perf_counter()
                ok = client.get(path).status_code == 200
                self.latencies.append(time.perf_counter() - started)
                self.at.append(started - self.began)
                self.kinds.append(path.split("/")[1])
                self.errors += not ok
                time.sleep(0.002)  # a steady reader, not a load test

    def __enter__(self) -> Prober:
        self.began = time.perf_counter()
        self.waited = (run_queue_wait_s(self.api_pid), run_queue_wait_s(os.getpid()))
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.thread.join(15)
        self.ended = time.perf_counter()
        self.waited = (run_queue_wait_s(self.api_pid) - self.waited[0],
                       run_queue_wait_s(os.getpid()) - self.waited[1])

    def summary(self) -> dict[str, Any]:
        q = statistics.quantiles(self.latencies, n=100)
        # Where the slowest 1% fell (seconds since the start, and ms): spread over the
        # whole run, or bunched at one step (the swap, say)?
        slowest = [(lat, at, kind) for lat, at, kind
                   in zip(self.latencies, self.at, self.kinds, strict=True) if lat >= q[98]]
        slow = sorted((lat, at) for lat, at, _ in slowest)
        requests = len(self.latencies)
        slowest_by_route = dict(Counter(kind for _, _, kind in slowest))
        return {"requests": requests, "errors": self.errors,
                "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
                "seconds": round(self.ended - self.began, 2),
                # Run-queue wait (schedstat) per request: of the query API's threads (when
                # its pid is known), and of this process (the prober, and the replay's
                # main thread during a replay): CPU starvation, as against slow work.
                "slowest_by_route": slowest_by_route,
                "api_run_queue_wait_ms_per_request": round(
                    self.waited[0] * 1000 / max(requests, 1), 3),
                "prober_run_queue_wait_ms_per_request": round(
                    self.waited[1] * 1000 / max(requests, 1), 3),
                "slowest_at_s_ms": [[round(at, 1), round(lat * 1000, 1)]
                                    for lat, at in sorted(slow, key=lambda x: x[1])]}


def listening_pid(port: int | None) -> int | None:
    """The process listening on 127.0.0.1:`port` (its socket's inode in /proc/net/tcp, then
    that inode among the processes' open files), for the query API's run-queue wait when
    its pid is not given; None when not found (another user's process, say)."""
    if port is None:
        return None
    inode = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inode = fields[9]
                break
    if inode is None:
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return int(fd_dir.parent.name)
    return None


def client_backends(database_url: str, pid: int | None) -> set[int]:
    """The PostgreSQL backends serving process `pid`'s TCP connections (its sockets'
    local ports, /proc/net/tcp*, as pg_stat_activity's client_port)."""
    if pid is None:
        return set()
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    with psycopg.connect(database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (sorted(ports),))}


def _schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting runnable for one) of process `pid`'s main thread."""
    try:
        on_cpu, waited = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return int(on_cpu), int(waited)


def _nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


class Backends:
    """Samples PostgreSQL's backends every `every` s on a thread: their wait events
    (pg_stat_activity, the query API's backends apart from the others) and their CPU and
    run-queue wait (/proc/<pid>/schedstat), to tell where a slow read's time went."""

    def __init__(self, database_url: str, api_pid: int | None, every: float = 0.05) -> None:
        self.url, self.api_pid, self.every = database_url, api_pid, every
        self.api: set[int] = set()
        self.first: dict[int, tuple[int, int]] = {}
        self.last: dict[int, tuple[int, int]] = {}
        self.nice: dict[int, int] = {}
        self.waits: Counter[str] = Counter()
        self.samples = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            me = conn.info.backend_pid
            while not self.halt.wait(self.every):
                rows = conn.execute(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND pid <> %s", (me,)).fetchall()
                self.samples += 1
                for pid, state, kind, event in rows:
                    stat = _schedstat(pid)
                    if stat is None:
                        continue
                    self.first.setdefault(pid, stat)
                    self.last[pid] = stat
                    if (nice := _nice(pid)) is not None:
                        self.nice[pid] = nice
                    who = "api" if pid in self.api else (
                        "niced" if self.nice.get(pid, 0) > 0 else "other")
                    if state == "active":
                        self.waits[f"{who}:{kind or 'CPU'}:{event or '-'}"] += 1

    def _checkpoints(self) -> int:
        """Checkpoints PostgreSQL has made (timed and requested; pg_stat_bgwriter up to 16,
        pg_stat_checkpointer from 17)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for query in ("SELECT num_timed + num_requested FROM pg_stat_checkpointer",
                          "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"):
                with contextlib.suppress(psycopg.Error):
                    row = conn.execute(query).fetchone()
                    return int(row[0]) if row is not None else 0
        return 0

    def __enter__(self) -> Backends:
        self.api = client_backends(self.url, self.api_pid)
        self.checkpoints = self._checkpoints()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.thread.join(15)
        self.checkpoints = self._checkpoints() - self.checkpoints

    def summary(self, requests: int) -> dict[str, Any]:
        def total(pids: set[int]) -> tuple[float, float]:
            cpu = sum(self.last[p][0] - self.first[p][0] for p in pids if p in self.last)
            wait = sum(self.last[p][1] - self.first[p][1] for p in pids if p in self.last)
            return cpu / 1e9, wait / 1e9
        niced = {p for p, n in self.nice.items() if n > 0 and p not in self.api}
        rest = set(self.last) - self.api - niced
        out: dict[str, Any] = {"samples": self.samples, "checkpoints": self.checkpoints}
        for name, pids in (("api", self.api), ("niced", niced), ("other", rest)):
            cpu, wait = total(pids)
            out[f"{name}_backends"] = {"count": len(pids & set(self.last)),
                                       "cpu_s": round(cpu, 3),
                                       "run_queue_wait_s": round(wait, 3)}
        out["api_backends_run_queue_wait_ms_per_request"] = round(
            total(self.api)[1] * 1000 / max(requests, 1), 3)
        out["wait_events"] = dict(self.waits.most_common(25))
        return out


def probe_paths(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        courses = [r[0] for r in conn.execute(
            "SELECT course_id FROM course_stats WHERE title IS NOT NULL LIMIT 100")]
        signups = [r[0] for r in conn.execute("SELECT signup_id FROM signup_decisions LIMIT 100")]
    out = []
    for i in range(100):
        out += ["/stats", f"/courses/{courses[i % len(courses)]}/stats",
                f"/signups/{signups[i % len(signups)]}"]
    return out


def run_queue_wait_s(pid: int | None) -> float:
    """Seconds the threads of process `pid` have waited runnable for a CPU
    (/proc/<pid>/task/*/schedstat, second field; threads gone are not counted)."""
    if pid is None:
        return 0.0
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def query_p99(bootstrap: str, database_url: str, url: str, headers: dict[str, str],
              workers: int, idle_s: float, api_pid: int | None = None,
              monitor_url: str | None = None) -> dict[str, Any]:
    """`monitor_url`: the connection that samples pg_stat_activity (default
    `database_url`). A role sees another role's sessions only with pg_read_all_stats:
    without it their backend_type and client_port read NULL and they go uncounted."""
    paths = probe_paths(database_url)
    monitor = monitor_url or database_url
    if api_pid is None:
        api_pid = listening_pid(urlsplit(url).port)
    with Backends(monitor, api_pid) as idle_pg, \
            Prober(url, paths, headers, api_pid) as idle:
        time.sleep(idle_s)
    # The replay as `make replay` runs it: a process of its own (not a thread of this one,
    # whose Python would share the prober's GIL), niced.
    with Backends(monitor, api_pid) as busy_pg, \
            Prober(url, paths, headers, api_pid) as busy:
        started = time.perf_counter()
        _finish(_command(bootstrap, database_url, "--restart", f"--workers={workers}",
                         nice=None))
        replay = {"workers": workers, "seconds": round(time.perf_counter() - started, 2)}
    idle_q, busy_q = idle.summary(), busy.summary()
    idle_q["postgres"] = idle_pg.summary(idle_q["requests"])
    busy_q["postgres"] = busy_pg.summary(busy_q["requests"])
    return {"idle": idle_q, "during_replay": busy_q, "replay": replay,
            "ratio": round(busy_q["p99_ms"] / idle_q["p99_ms"], 2)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


ROUNDS = 3  # steps 1 to 3 (module docstring): each the median of this many alternating rounds
# Step 4's pairs. One pair's ratio moved between 0.84x and 1.22x in five pairs on one
# stack (a resumed run's own extra work is about a second of about twenty: a second
# interpreter's start and the batches in flight at the kill), so its median needs more
# of them than the throughput figures do.
RESUME_ROUNDS = 5


def median_round(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose `key` is the median (the lower of the two middle ones of an even
    count): a real measurement, its fields consistent with each other."""
    ordered = sorted(samples, key=lambda sample: sample[key])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(samples)}


def median_resume(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The resume figure from several pairs: the median killed-and-resumed total against
    the median uninterrupted run (each pair's own ratio is kept in `rounds`)."""
    whole = statistics.median(p["uninterrupted_s"] for p in pairs)
    total = statistics.median(p["total_s"] for p in pairs)
    middle = median_round(pairs, "total_s")
    return {**middle, "uninterrupted_s": round(whole, 2), "total_s": round(total, 2),
            "ratio": round(total / whole, 3),
            "pair_ratios": [p["ratio"] for p in pairs]}


def measure(bootstrap: str, database_url: str, query_url: str | None = None,
            headers: dict[str, str] | None = None, api_pid: int | None = None,
            query_only: bool = False, monitor_url: str | None = None,
            rounds_of: int = ROUNDS, resume_rounds_of: int = RESUME_ROUNDS) -> dict[str, Any]:
    """Figure 4 against the event log at `bootstrap`; see the module's docstring.
    `query_only`: step 5 alone (with a query API), its idle part 20 s. `rounds_of`:
    how many alternating rounds steps 1 to 3 are the median of; `resume_rounds_of`: how
    many pairs step 4 is."""
    out: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "load_before": load_average()}
    if query_only and query_url is not None:
        quiet_views(database_url)
        out["query_api"] = query_p99(bootstrap, database_url, query_url, headers or {}, 2,
                                     20.0, api_pid, monitor_url)
        out["load_after"] = load_average()
        out["ratios"] = {"query_p99_during_vs_idle": out["query_api"]["ratio"]}
        return out
    settle = Settle(query_url)
    rounds: dict[str, list[dict[str, Any]]] = {
        "plain_consume_decode": [], "one_worker": [], "two_workers": [], "resume": []}
    for _ in range(max(1, rounds_of)):
        rounds["plain_consume_decode"].append(bk.consume_and_decode(bootstrap))
        for name, workers in (("one_worker", 1), ("two_workers", 2)):
            quiet_views(database_url)
            rounds[name].append(in_process(bootstrap, database_url, workers))
            settle()
    for _ in range(max(1, resume_rounds_of)):
        rounds["resume"].append(killed_and_resumed(bootstrap, database_url, 2, settle))
    for name in ("plain_consume_decode", "one_worker", "two_workers"):
        out[name] = median_round(rounds[name], "seconds")
    out["resume"] = median_resume(rounds["resume"])
    out["rounds"] = rounds
    quiet_views(database_url)
    if query_url is not None:
        seconds = max(10.0, out["two_workers"]["seconds"])
        out["query_api"] = query_p99(bootstrap, database_url, query_url, headers or {}, 2,
                                     seconds, api_pid, monitor_url)
    out["load_after"] = load_average()
    plain = out["plain_consume_decode"]["events_per_s"]
    one, two = out["one_worker"]["events_per_s"], out["two_workers"]["events_per_s"]
    out["ratios"] = {"one_worker_vs_plain": round(one / plain, 3),
                     "two_vs_one_worker": round(two / one, 3),
                     "killed_and_resumed_vs_uninterrupted": out["resume"]["ratio"]}
    if "query_api" in out:
        out["ratios"]["query_p99_during_vs_idle"] = out["query_api"]["ratio"]
    return out


def main() -> None:
    from proof.bench_projections import Workload, _chain, produce, spawn
    from stack.infra import dependencies
    from stack.probes import http_ok

    parser = argparse.ArgumentParser(prog="python -m proof.bench_replay")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--courses", type=int, default=1_000)
    parser.add_argument("--no-query-api", action="store_true")
    parser.add_argument("--query-only", action="store_true",
                        help="only the query API's p99, idle (20 s) and during a replay")
    args = parser.parse_args()
    import random

    out_dir = results_dir()
    run_dir = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    config = StackConfig.on_free_ports(run_dir, admin_token="bench-admin-token")
    processes = []
    try:
        with dependencies(config):
            bootstrap, database = config.kafka_bootstrap, config.database_url
            work = Workload(random.Random(42), [f"bench-{i:05d}" for i in range(args.courses)])
            print(f"writing {args.events:,} events ...", flush=True)
            produce(bootstrap, _chain(work.course_events(),
                                      work.decision_events(args.events - args.courses)))
            env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database,
                   "PROJECTOR_PORT": str(config.projector_port),
                   "QUERY_API_PORT": str(config.query_api_port), "LOG_LEVEL": "WARNING",
                   "ADMIN_TOKEN": config.admin_token(), "ANALYST_TOKEN": config.analyst_token()}
            processes.append(spawn("projections.projector", env, run_dir / "projector.log"))
            query_url, api_pid = None, None
            if not args.no_query_api:
                processes.append(spawn("projections.api", env, run_dir / "api.log"))
                api_pid = processes[-1].pid
                query_url = config.query_url
                wait_until(lambda: http_ok(config.query_url + "/readyz"), 60, "the query API")
            ends = bk.end_offsets(bootstrap, "course-events")
            wait_until(lambda: _caught_up(database, ends), 1800, "the live projector")
            results = measure(bootstrap, database, query_url,
                              {"Authorization": f"Bearer {config.analyst_token()}"}, api_pid,
                              args.query_only)
    finally:
        for proc in processes:
            terminate(proc, 30)
        shutil.rmtree(run_dir, ignore_errors=True)
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fig4_replay.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _caught_up(database_url: str, ends: dict[int, int]) -> bool:
    with psycopg.connect(database_url) as conn:
        stored: dict[int, int] = dict(conn.execute(
            "SELECT partition, next_offset FROM projection_offsets"
            " WHERE projection = 'views'").fetchall())
    return all(stored.get(p, 0) >= end for p, end in ends.items())


if __name__ == "__main__":
    main()
