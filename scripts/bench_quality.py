#!/usr/bin/env python3
"""Detection quality of the active model and a candidate, side by side, on a simulated week with traps.

    .venv/bin/python scripts/bench_quality.py [--keys 500] [--days 7] [--seed 1] [--candidate VERSION]

Without ``--candidate``, a candidate is trained the way ``fairuse train`` does
it, on a separate simulated week (seed + 100, abusive keys left out of the
benign history), into a temporary folder. ``--thresholds FILE`` puts a
thresholds TOML over the candidate's own, to try a recalibration. Both sides score the evaluation
week with every detector and the shipped policy, in memory, and the decisions
are evaluated against the simulator's labels. Prints a Markdown table per
side with the goals, and exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import orjson

from detector.evaluate import evaluate
from detector.model_registry import AnomalyModel, load_model
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import read_events
from detector.retrain import TrainOptions, run_training
from detector.features.hosting import ENVIRONMENT_VARIABLE
from detector.simulate import simulate_traffic
from detector.thresholds import check_thresholds, merged

RECALL_GOAL = 0.95
FALSE_ACTION_GOAL = 0.002
REVIEW_GOAL = 0.02
# Median time to detect, in minutes, per abuse kind; kinds without a goal are reported only.
DETECT_GOALS = {
    "cost_spike": 10, "concurrency_flood": 10, "runaway_loop": 10, "bot": 10,
    "resold_key": 60, "shared_key": 60,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--active", help="Active model version (default: the shipped default).")
    parser.add_argument("--candidate", help="Candidate version in models/ (default: train one).")
    parser.add_argument("--thresholds", type=Path, help="Thresholds TOML put over the candidate's own.")
    parser.add_argument("--no-hosting", action="store_true",
                        help="Score without the simulated cloud ranges (FAIRUSE_HOSTING_NETWORKS unset).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fairuse-bench-") as folder:
        folder = Path(folder)
        active = load_model(version=args.active)
        candidate = load_model(version=args.candidate) if args.candidate else _train_candidate(folder, args)
        if args.thresholds:
            overrides = check_thresholds(tomllib.loads(args.thresholds.read_text("utf-8")), str(args.thresholds))
            candidate = AnomalyModel(
                estimator=candidate.estimator,
                metadata={**candidate.metadata, "thresholds": merged(candidate.thresholds, overrides)},
            )
        simulation = simulate_traffic(folder / "week", keys=args.keys, days=args.days, seed=args.seed)
        if args.no_hosting:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
        else:
            # As an operator with the cloud providers' published ranges runs it.
            os.environ[ENVIRONMENT_VARIABLE] = str(simulation.hosting_path)
        frame = read_events([simulation.events_path]).frame
        print(f"evaluation week: fairuse simulate --keys {args.keys} --days {args.days} --seed {args.seed} "
              f"({len(frame):,} events)\n")

        reports = {}
        for role, model in (("active", active), ("candidate", candidate)):
            started = time.perf_counter()
            reports[role] = _evaluate(model, frame, simulation.labels_path, folder / f"{role}.jsonl")
            print(f"{role}: iforest-{model.version}, scored in {time.perf_counter() - started:.0f} s")
        print()

    missed = _print_tables(reports)
    if missed:
        print("\ngoals missed: " + "; ".join(missed))
        sys.exit(1)


def _train_candidate(folder: Path, args):
    history = simulate_traffic(folder / "history", keys=args.keys, days=args.days, seed=args.seed + 100)
    options = TrainOptions(
        paths=[history.events_path], labels_file=history.labels_path, database_url=f"sqlite:///{folder / 'train.db'}",
        models_dir=folder / "models", version=f"bench-seed{args.seed + 100}", injection_keys=0,
    )
    return run_training(options).model


def _evaluate(model, frame, labels_path: Path, decisions_path: Path) -> dict:
    result = score_events(frame, plans=load_plans(), policy=load_policy(), detectors=default_detectors(model))
    decisions_path.write_bytes(b"".join(orjson.dumps(item.to_dict()) + b"\n" for item in result.decisions))
    return evaluate(labels_path, decisions_path).to_dict()


def _print_tables(reports: dict[str, dict]) -> list[str]:
    missed: list[str] = []
    roles = list(reports)
    print("| abuse kind | keys | " + " | ".join(f"recall ({role})" for role in roles) + " | "
          + " | ".join(f"median to detect ({role})" for role in roles) + " | goal |")
    print("| --- | --- | " + " | ".join("---" for _ in roles * 2) + " | --- |")
    kinds = [row["kind"] for row in reports[roles[0]]["abuse"]]
    for kind in kinds:
        rows = {role: next(row for row in reports[role]["abuse"] if row["kind"] == kind) for role in roles}
        goal = DETECT_GOALS.get(kind)
        for role, row in rows.items():
            if row["recall"] < RECALL_GOAL:
                missed.append(f"{role} recall {kind} {row['recall']:.3f}")
            median = row["median_seconds_to_detect"]
            if goal is not None and (median is None or median > goal * 60):
                missed.append(f"{role} median time to detect {kind} {_minutes(median)}")
        print(f"| {kind} | {rows[roles[0]]['keys']} | "
              + " | ".join(f"{rows[role]['caught']}/{rows[role]['keys']} = {rows[role]['recall']:.3f}" for role in roles)
              + " | " + " | ".join(_minutes(rows[role]["median_seconds_to_detect"]) for role in roles)
              + f" | recall ≥ {RECALL_GOAL}" + (f", ≤ {goal} min" if goal else "") + " |")

    print("\n| benign keys | " + " | ".join(roles) + " | goal |")
    print("| --- | " + " | ".join("---" for _ in roles) + " | --- |")
    for label, field, share_field, goal in (
        ("with a throttle or suspension", "false_action_keys", "false_action_share", FALSE_ACTION_GOAL),
        ("with reviews only", "review_only_keys", "review_share", REVIEW_GOAL),
    ):
        cells = []
        for role in roles:
            total = reports[role]["benign_total"]
            cells.append(f"{total[field]} of {total['keys']} ({total[share_field]:.2%})")
            if total[share_field] > goal:
                missed.append(f"{role} benign {label} {total[share_field]:.2%}")
        print(f"| {label} | " + " | ".join(cells) + f" | ≤ {goal:.1%} |")
    return missed


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    main()
