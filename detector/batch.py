"""The batch front door: files in, decisions stored and written out."""

from __future__ import annotations

import importlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from detector.decisions import Decision
from detector.detectors import Finding
from detector.features import PreparedEvents, prepare_events
from detector.features.hosting import hosting_from_environment
from detector.model_registry import ModelError, default_models_dir, load_model
from detector.model_switch import load_active_model, shadow_from
from detector.shadow import prior_without_shadow, without_shadow
from detector.pipeline import ScoringResult, default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import ReadResult, read_events
from detector.review.activity import ActivityLog
from detector.store import DecisionStore, open_store
from detector.store.model_assignments import SHADOW, ModelAssignments
from detector.store.allowlist import StaffAllowlist
from detector.store.database import resolve_url

logger = logging.getLogger(__name__)
# After coding (``prepare_events``) the run needs only the frame's times. Dropping the other
# columns before the detectors run lowered the peak of a million events by about 200 MB.
KEPT_AFTER_CODING = ("ts",)
_FINDING_FIELDS = tuple(item.name for item in fields(Finding))


class BatchError(RuntimeError):
    """Raised when a run cannot produce a trustworthy result; the message gives the cause and the fix."""


@dataclass(slots=True)
class BatchOptions:
    """Inputs and settings of one ``fairuse score`` run."""

    paths: Sequence[Path]
    format: str | None = None
    plans: Path | None = None
    policy: Path | None = None
    database_url: str | None = None
    out: Path | None = None
    rejects: Path | None = None
    max_reject_ratio: float = 0.5
    model_version: str | None = None
    use_model: bool = True
    simulate: bool = False
    # Processes the detectors run in; inputs below pipeline.MIN_EVENTS_TO_FORK events use one.
    # In one process they run in threads (see pipeline.run_detectors). Two processes raised the
    # summed peak memory from about 940 to 1,110 MB per million events, and were slower on a
    # fully loaded machine, so one is the default.
    processes: int = 1


@dataclass(slots=True)
class BatchReport:
    """Records read, findings and decisions of one run, for the summary table."""

    # Its frame keeps only the columns in KEPT_AFTER_CODING. The events as scored are ``result.prepared``.
    read: ReadResult
    result: ScoringResult
    decisions: list[Decision]
    new_decisions: int
    rejects_path: Path | None
    outputs: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model_version: str | None = None
    shadow: str | None = None
    simulated: bool = False
    database: str = ""

    def decisions_by(self, attribute: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for decision in self.decisions:
            values = getattr(decision, attribute)
            counts.update(values if isinstance(values, list) else [values])
        return counts


def run_batch(options: BatchOptions, progress: Callable[[int], None] | None = None) -> BatchReport:
    """Read, score, store and write out one batch; see ``BatchOptions``."""
    started = datetime.now(UTC)
    plans = load_plans(options.plans)
    policy = load_policy(options.policy)
    # Checked before reading, as plans and policy are; detectors load it again from the cache.
    hosting_from_environment()

    _check_output_paths(options)
    importer = _import_libraries_in_background()
    read = read_events(options.paths, format=options.format, progress=progress)
    # Joined here, so no thread runs when the detectors fork.
    importer.join()
    warnings = list(read.warnings)
    rejects_path = _write_rejects(read, options)
    _check_reject_share(read, options, rejects_path)

    unknown = plans.unknown(read.frame["plan"])
    if unknown:
        listed = ", ".join(repr(name) for name in unknown[:5])
        warnings.append(
            f"plan names not in the plan catalogue were scored as 'default' ({len(unknown)}): {listed}; "
            "add them to the plans file given with --plans"
        )

    store = _open_store(options.database_url)
    model, model_warning = _load_model(options, store)
    if model_warning:
        warnings.append(model_warning)

    simulated = True if options.simulate else policy.simulation
    prepared = prepare_events(read.frame, plans)
    read.frame = read.frame[list(KEPT_AFTER_CODING)]
    result = score_events(
        prepared,
        plans=plans,
        policy=policy,
        detectors=default_detectors(model),
        prior=prior_without_shadow(store),
        suspensions=store.suspensions_between,
        allowlisted=StaffAllowlist(store.engine).active_among,
        now=started,
        simulated=simulated,
        processes=options.processes,
    )
    warnings.extend(result.outcome.warnings)

    store.save_findings(result.findings)
    new = store.save_decisions(result.decisions)
    ActivityLog(store.engine).record(result.prepared, result.acted_on())
    shadow_warnings, shadow_summary = run_shadow(
        result.prepared, store, model=model, plans=plans, policy=policy, now=started
    )
    warnings.extend(shadow_warnings)
    decisions = _decisions_for_input(store, read, result, simulated)
    result.subjects["actions"] = _actions_by_subject(result.subjects, decisions)
    store.record_run(
        started_at=started,
        finished_at=datetime.now(UTC),
        inputs=[str(path) for path in options.paths],
        records=read.records,
        rejected=len(read.rejects),
        duplicates=read.duplicates,
        findings=len(result.findings),
        decisions=new,
        policy=policy.origin,
        summary={"warnings": warnings},
    )

    report = BatchReport(
        read=read,
        result=result,
        decisions=decisions,
        new_decisions=new,
        rejects_path=rejects_path,
        warnings=warnings,
        model_version=model.version if model else None,
        shadow=shadow_summary,
        simulated=simulated,
        database=store.engine.url.render_as_string(hide_password=True),
    )
    if options.out:
        report.outputs = write_outputs(options.out, report)
    return report


def _import_libraries_in_background() -> threading.Thread:
    """Start importing Alembic while the events are read. ``open_store`` reports an import error.

    Models with a trees file score without scikit-learn, so it is not
    imported here: importing it beside the reader took about a second of
    CPU time from the validation, which holds the GIL too.
    """
    names = ["alembic.command", "alembic.config"]

    def import_libraries() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                pass

    thread = threading.Thread(target=import_libraries, name="fairuse-import", daemon=True)
    thread.start()
    return thread


def run_shadow(
    events: pd.DataFrame | PreparedEvents, store: DecisionStore, *, model, plans, policy, now: datetime
) -> tuple[list[str], str | None]:
    """Score ``events`` (a frame, or prepared with ``plans``) with the registry's shadow, if one runs.

    Returns warnings for the summary and a line naming the shadow with the number
    of simulated decisions it made on this input, or None when no shadow runs.
    """
    try:
        shadow = shadow_from(
            ModelAssignments(store.engine).current(SHADOW), active=model, policy=policy, models_dir=default_models_dir()
        )
    except (ModelError, ValueError) as error:
        return [f"shadow not run: {error}"], None
    if shadow is None:
        return [], None
    run = shadow.score(events, plans=plans, store=store, now=now)
    logger.info("shadow %s made %d simulated decisions, %d new", shadow.label, len(run.decisions), run.stored)
    return [], f"{shadow.label}: {len(run.decisions):,} simulated decisions on this input"


def write_outputs(out: Path, report: BatchReport) -> dict[str, Path]:
    """Write decisions to ``out`` and findings and subject scores beside it, as JSON lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name.removesuffix(".jsonl")
    paths = {
        "decisions": out,
        "findings": out.with_name(f"{stem}.findings.jsonl"),
        "subjects": out.with_name(f"{stem}.subjects.jsonl"),
    }
    _write_jsonl(paths["decisions"], (decision.to_dict() for decision in report.decisions))
    _write_jsonl(paths["findings"], (_finding_dict(finding) for finding in report.result.findings))
    _write_jsonl(paths["subjects"], report.result.subjects.to_dict("records"))
    return paths


def _decisions_for_input(
    store: DecisionStore, read: ReadResult, result: ScoringResult, simulated: bool
) -> list[Decision]:
    """Return the decisions on this input's subjects detected within its time span.

    Decisions stored by an earlier run of the same input are included, so a
    rerun writes the same decisions file. Only decisions of this run's kind
    (simulated or enforced) are returned.
    """
    if read.frame.empty:
        return []
    first = datetime.fromtimestamp(float(read.frame["ts"].min()), UTC)
    last = datetime.fromtimestamp(float(read.frame["ts"].max()), UTC)
    subjects = {(finding.subject_type, finding.subject) for finding in result.findings}
    stored = without_shadow(store.decisions_for(subjects))
    chosen = {
        decision.id: decision
        for decision in stored
        if first <= decision.detected_at <= last and decision.simulated == simulated
    }
    for decision in result.decisions:
        chosen.setdefault(decision.id, decision)
    return sorted(chosen.values(), key=lambda decision: (decision.detected_at, decision.id))


def _actions_by_subject(subjects: pd.DataFrame, decisions: list[Decision]) -> list[list[str]]:
    actions: dict[tuple[str, str], set[str]] = {}
    for decision in decisions:
        actions.setdefault((decision.subject_type, decision.subject), set()).add(decision.action)
    keys = zip(subjects["subject_type"], subjects["subject"])
    return [sorted(actions.get(key, ())) for key in keys]


def _open_store(url: str | None) -> DecisionStore:
    try:
        return open_store(url)
    except (SQLAlchemyError, OSError) as error:
        raise BatchError(
            f"cannot open the database {_safe_url(resolve_url(url))!r}: "
            f"{str(error).splitlines()[0]}; check --db or FAIRUSE_DATABASE_URL "
            "(sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB)"
        ) from error


def _safe_url(url: str) -> str:
    """Return ``url`` with any password masked, or a placeholder when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "(not a database URL)"


def _load_model(options: BatchOptions, store: DecisionStore):
    """Load ``--model``, else the version activated in the registry (see ``detector.model_switch``)."""
    if not options.use_model:
        return None, None
    try:
        if options.model_version:
            return load_model(version=options.model_version), None
        return load_active_model(store), None
    except ModelError as error:
        if options.model_version:
            raise BatchError(str(error)) from error
        return None, f"anomaly detector skipped: {error}"


def _rejects_path(options: BatchOptions) -> Path:
    if options.rejects:
        return options.rejects
    if options.out:
        return options.out.with_name(options.out.name.removesuffix(".jsonl") + ".rejects.txt")
    return Path("fairuse-rejects.txt")


def _check_output_paths(options: BatchOptions) -> None:
    """Reject output paths that would fail late or overwrite an input, before any work."""
    inputs = {path.resolve() for path in map(Path, options.paths) if path.exists()}
    rejects = _rejects_path(options)
    if options.out is not None and options.out.is_dir():
        raise BatchError(f"--out {options.out} is a directory; give a file name such as {options.out / 'decisions.jsonl'}")
    for name, path in (("--out", options.out), ("the rejects file", rejects)):
        if path is not None and path.resolve() in inputs:
            raise BatchError(f"{name} {path} is also an input and would be overwritten; write it elsewhere")
    if rejects.is_dir():
        raise BatchError(f"rejects file {rejects} is a directory; pass --rejects FILE")


def _write_rejects(read: ReadResult, options: BatchOptions) -> Path | None:
    """Write the rejects file, or remove a stale one from an earlier run when there are none."""
    path = _rejects_path(options)
    if not read.rejects:
        if options.rejects is None and options.out is not None and path.is_file():
            path.unlink()
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(reject.format() + "\n" for reject in read.rejects), "utf-8")
    return path


def _check_reject_share(read: ReadResult, options: BatchOptions, rejects_path: Path | None) -> None:
    valid = len(read.frame)
    where = f"; see {rejects_path}" if rejects_path else ""
    if valid == 0:
        names = ", ".join(str(path) for path in options.paths)
        first = f" First reject: {read.rejects[0].format()}." if read.rejects else ""
        first += "".join(f" {warning}." for warning in read.warnings)
        hint = (
            " Check that the files hold events in the format of docs/events.md, or name it with --format."
            if read.rejects
            else " The inputs are empty: check the paths, or that the gateway wrote the log."
        )
        raise BatchError(
            f"no valid records in {names}: {read.records} read, {len(read.rejects)} rejected{where}.{first}{hint}"
        )
    counted = max(read.records - read.duplicates, 1)
    share = len(read.rejects) / counted
    if share > options.max_reject_ratio:
        raise BatchError(
            f"{len(read.rejects)} of {counted} records were rejected ({share:.1%}), more than "
            f"--max-reject-ratio {options.max_reject_ratio:g}{where}; repeated request_ids are not counted. "
            "Fix the input or raise the ratio."
        )


def _finding_dict(finding: Finding) -> dict:
    values = {name: getattr(finding, name) for name in _FINDING_FIELDS}
    for name in ("detected_at", "window_start", "window_end"):
        values[name] = datetime.fromtimestamp(values[name], UTC).isoformat().replace("+00:00", "Z")
    return values


def _write_jsonl(path: Path, rows) -> None:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))
            handle.write(b"\n")
