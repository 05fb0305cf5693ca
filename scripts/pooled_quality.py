#!/usr/bin/env python3
"""Times to detect pooled over many simulated weeks, per abuse kind and per week.

    .venv/bin/python scripts/pooled_quality.py OUT_DIR --seeds 1-10,12-21 [--keys 500] [--days 7]

For each seed it simulates a week into ``OUT_DIR/seed-N`` (kept, and reused
when its decisions are already there), scores it with the shipped detectors,
model and policy and the simulated hosting ranges, as ``fairuse score`` would,
and prints per abuse kind:

- the median time to detect over every key of every week (a missed key
  counts as never caught, so it sits above any finite time);
- how many keys were caught within 10 and 60 minutes;
- the weeks whose own median is over 60 minutes.

A week has few keys of each kind (13 shared keys in 500), so its median moves
by hours with two or three late keys. The pooled median is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from detector.evaluate import detection_delays

FAIRUSE = str(Path(sys.executable).with_name("fairuse"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seeds", type=seed_list, default=seed_list("1-10"), help="Seeds such as 1-10,12-21.")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()

    pooled: dict[str, dict[int, list[float]]] = {}
    for seed in args.seeds:
        folder = args.out_dir / f"seed-{seed}"
        simulate_and_score(folder, seed, args.keys, args.days)
        for kind, delays in detection_delays(folder / "labels.csv", folder / "decisions.jsonl").items():
            minutes = [np.inf if delay is None else delay / 60 for delay in delays]
            pooled.setdefault(kind, {})[seed] = minutes

    print(f"{len(args.seeds)} weeks of {args.keys} keys × {args.days} days")
    print(f"{'abuse kind':<20}{'keys':>6}{'median':>10}{'≤ 10 min':>10}{'≤ 60 min':>10}  weeks over 60 min")
    for kind, weeks in sorted(pooled.items()):
        report_kind(kind, weeks)


def seed_list(text: str) -> list[int]:
    """Parse ``1-10,12`` into ``[1, ..., 10, 12]``."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def simulate_and_score(folder: Path, seed: int, keys: int, days: int) -> None:
    if (folder / "decisions.jsonl").exists():
        return
    simulate = [FAIRUSE, "simulate", str(folder), "--keys", str(keys), "--days", str(days), "--seed", str(seed)]
    subprocess.run(simulate, check=True, capture_output=True)

    environment = dict(os.environ, FAIRUSE_HOSTING_NETWORKS=str(folder / "hosting-networks.txt"))
    score = [
        FAIRUSE, "score", str(folder / "events.jsonl"),
        "--db", f"sqlite:///{folder / 'fairuse.db'}", "--out", str(folder / "decisions.jsonl"),
    ]
    subprocess.run(score, check=True, capture_output=True, env=environment)


def report_kind(kind: str, weeks: dict[int, list[float]]) -> None:
    every = np.array([minutes for week in weeks.values() for minutes in week])
    late_weeks = [seed for seed, week in weeks.items() if np.median(week) > 60]
    median = np.median(every)
    median_text = "missed" if np.isinf(median) else f"{median:.1f} min"
    print(
        f"{kind:<20}{len(every):>6}{median_text:>10}{int((every <= 10).sum()):>10}{int((every <= 60).sum()):>10}"
        f"  {', '.join(map(str, late_weeks)) or 'none'}"
    )


if __name__ == "__main__":
    main()
