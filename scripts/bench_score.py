#!/usr/bin/env python3
"""Benchmark batch scoring against a plain JSON-lines parse of the same file.

    .venv/bin/python scripts/bench_score.py [--keys 2200] [--days 7] [--seed 11] [--repeat 3]
    .venv/bin/python scripts/bench_score.py --events path/to/events.jsonl [--processes 2]

It writes (or takes) a simulated events file of at least a million events and
times, alternating, in fresh subprocesses:

- ``parse-orjson``: ``orjson.loads`` on every line, the records kept in a list;
- ``parse-pyarrow``: ``pyarrow.json.read_json`` of the whole file (multithreaded);
- ``score``: ``fairuse score`` without the CLI: read, validate, score, store the
  findings and decisions in a fresh SQLite file.

Each phase runs in its own process so its peak RSS is its own. The report is
the median of ``--repeat`` rounds (wall and CPU seconds), the ratio of
scoring's events/s to each parse's, and the ratio of their CPU seconds.

With ``--processes 2`` scoring forks its detectors into a second process,
whose memory the scoring process's peak RSS leaves out. The script then also
samples the summed PSS of the scoring process and its children every 50 ms
and reports its peak. PSS counts pages shared after the fork once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("parse-orjson", "parse-pyarrow", "score")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="An events JSON-lines file (default: simulate one).")
    parser.add_argument("--keys", type=int, default=2200)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="Processes the detectors run in (default 1).")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        print(json.dumps(run_phase(args.phase, args.events, args.processes)))
        return

    with tempfile.TemporaryDirectory() as folder:
        events = args.events or simulate(Path(folder), args)
        results = {phase: [] for phase in PHASES}
        for _ in range(args.repeat):
            for phase in PHASES:
                results[phase].append(run_in_subprocess(phase, events, args.processes))
        report(events, results)


def simulate(folder: Path, args: argparse.Namespace) -> Path:
    from detector.simulate import simulate_traffic

    result = simulate_traffic(folder, keys=args.keys, days=args.days, seed=args.seed)
    return result.events_path


def run_in_subprocess(phase: str, events: Path, processes: int = 1) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--events", str(events), "--processes", str(processes)]
    if processes == 1 or phase != "score":
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(command, stdout=output, text=True)
        peak_pss = 0.0
        while child.poll() is None:
            peak_pss = max(peak_pss, summed_pss_mb(child.pid))
            time.sleep(0.05)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, command)
        output.seek(0)
        result = json.loads(output.read().strip().splitlines()[-1])
    return {**result, "peak_pss_mb": peak_pss}


def summed_pss_mb(pid: int) -> float:
    """Return the PSS of ``pid`` and its descendants in MB, from /proc (Linux only)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024
        except (OSError, StopIteration):
            continue
    return total


def run_phase(phase: str, events: Path, processes: int = 1) -> dict:
    started = time.perf_counter()
    cpu_started = time.process_time()
    if phase == "parse-orjson":
        count = parse_with_orjson(events)
    elif phase == "parse-pyarrow":
        count = parse_with_pyarrow(events)
    else:
        count = score(events, processes)
    seconds = time.perf_counter() - started
    # CPU time of every thread of this process (not of forked detector processes).
    cpu_seconds = time.process_time() - cpu_started
    return {"events": count, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_resident_mb()}


def peak_resident_mb() -> float:
    """Return this process's peak resident memory in MB.

    VmHWM is per address space, so it starts afresh at exec; ru_maxrss on
    Linux can carry the forking parent's peak over into the child.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_with_orjson(events: Path) -> int:
    import orjson

    with events.open("rb") as handle:
        records = [orjson.loads(line) for line in handle if line.strip()]
    return len(records)


def parse_with_pyarrow(events: Path) -> int:
    import pyarrow.json as pajson

    return pajson.read_json(events).num_rows


def score(events: Path, processes: int = 1) -> int:
    from detector.batch import BatchOptions, run_batch
    from detector.runtime import configure_process

    configure_process()  # as the fairuse command does
    with tempfile.TemporaryDirectory() as folder:
        options = BatchOptions(paths=[events], database_url=f"sqlite:///{folder}/bench.db", processes=processes)
        report = run_batch(options)
    return len(report.read.frame)


def report(events: Path, results: dict[str, list[dict]]) -> None:
    medians = {}
    for phase, runs in results.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        medians[phase] = {
            "events": runs[0]["events"],
            "seconds": seconds,
            "cpu_seconds": statistics.median(run["cpu_seconds"] for run in runs),
            "events_per_s": runs[0]["events"] / seconds,
            "peak_mb": max(run["peak_mb"] for run in runs),
        }

    print(f"file: {events} ({events.stat().st_size / 1e6:.0f} MB)")
    print(f"{'phase':<15}{'events':>12}{'seconds':>10}{'CPU s':>8}{'events/s':>14}{'peak MB':>10}")
    for phase, row in medians.items():
        print(f"{phase:<15}{row['events']:>12,}{row['seconds']:>10.2f}{row['cpu_seconds']:>8.2f}"
              f"{row['events_per_s']:>14,.0f}{row['peak_mb']:>10.0f}")

    score_rate = medians["score"]["events_per_s"]
    for baseline in ("parse-orjson", "parse-pyarrow"):
        print(f"score / {baseline}: {score_rate / medians[baseline]['events_per_s']:.2f}")
    # When the parse keeps every core busy, score / parse-pyarrow can reach at most 1 / this ratio.
    cpu_ratio = medians["score"]["cpu_seconds"] / medians["parse-pyarrow"]["cpu_seconds"]
    print(f"score CPU s / parse-pyarrow CPU s: {cpu_ratio:.2f}")
    per_million = medians["score"]["peak_mb"] / (medians["score"]["events"] / 1e6)
    print(f"score peak memory per million events: {per_million:.0f} MB")
    if "peak_pss_mb" in results["score"][0]:
        summed = max(run["peak_pss_mb"] for run in results["score"]) / (medians["score"]["events"] / 1e6)
        print(f"score summed PSS of all its processes per million events: {summed:.0f} MB")


if __name__ == "__main__":
    main()
