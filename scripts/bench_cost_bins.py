#!/usr/bin/env python3
"""Time ``AbnormalCostDetector.detect`` against an older version of its module, in one process.

    git show main:detector/detectors/cost.py > /tmp/cost_before.py
    .venv/bin/python scripts/bench_cost_bins.py EVENTS.jsonl --before /tmp/cost_before.py [--repeat 5]

The events are read and prepared once. The two detectors then run in turns,
``--repeat`` times each, on the same prepared events, and the script prints
each one's median and fastest CPU seconds, the ratio before / after of the
medians, and how many findings each returned. The older module is loaded
from its file beside the installed package, so it must import only names
the current package still has.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from detector.detectors import AbnormalCostDetector
from detector.features import prepare_events
from detector.plans import load_plans
from detector.readers import read_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path, help="An events JSON-lines file.")
    parser.add_argument("--before", type=Path, required=True, help="The older detectors/cost.py to compare with.")
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each detector (default 5).")
    args = parser.parse_args()

    prepared = prepare_events(read_events([args.events]).frame, load_plans())
    detectors = {"before": load_older_detector(args.before), "after": AbnormalCostDetector()}
    seconds: dict[str, list[float]] = {name: [] for name in detectors}
    findings: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, detector in detectors.items():
            started = time.process_time()
            findings[name] = len(detector.detect(prepared))
            seconds[name].append(time.process_time() - started)

    print(f"{len(prepared.events):,} events, {args.repeat} runs each, CPU seconds")
    for name, runs in seconds.items():
        print(f"{name:<8} median {statistics.median(runs):.3f} s  fastest {min(runs):.3f} s  findings {findings[name]:,}")
    ratio = statistics.median(seconds["before"]) / statistics.median(seconds["after"])
    print(f"ratio before / after: {ratio:.2f}")


def load_older_detector(path: Path) -> AbnormalCostDetector:
    spec = importlib.util.spec_from_file_location("cost_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"failed to load {path}: expected a Python file such as detectors/cost.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.AbnormalCostDetector()


if __name__ == "__main__":
    main()
