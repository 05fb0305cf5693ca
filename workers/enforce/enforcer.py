"""The enforcer: make a gateway match the decisions in force, and undo what they no longer want.

Each pass compares the targets that the store's enforced decisions in force
want changed with the changes recorded in ``gateway_enforcements``:

- a wanted target with no change yet is read from the gateway's database
  first. When it is already disabled (by staff or by the gateway itself), it
  is recorded as ``untouched`` and left alone, also when the decision ends.
  Otherwise the admin API changes it and the value it had is kept.
- a recorded change that no decision wants any more (lifted or expired) is
  undone when the target still carries it, and recorded as ``released``.
  An undo the gateway rejects stays ``applied`` and pending, and is tried
  again on every pass, so a target is never left disabled silently.

So a pass is idempotent (a second pass makes no call), and a gateway that is
down loses nothing: its changes stay pending and the next pass makes them.
A dry run makes no call and records nothing but the audit of the calls it
would make.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from detector.store import DecisionStore
from detector.store.gateway_sync import GatewayEnforcementRow
from workers.enforce.client import GatewayRejected, GatewayUnavailable
from workers.enforce.targets import Adapter, MalformedSubject, Target, Wanted, wanted_targets

logger = logging.getLogger(__name__)

APPLIED, UNTOUCHED, REJECTED, RELEASED = "applied", "untouched", "rejected", "released"


@dataclass
class EnforcementReport:
    """Counts of one pass on one gateway: changes made, undone, left alone, rejected and pending."""

    gateway: str
    applied: int = 0
    undone: int = 0
    untouched: int = 0
    rejected: int = 0
    pending: int = 0
    unchanged: int = 0
    # Suspensions of this gateway's subjects that name nothing in its database (a token or user not found).
    unmatched: int = 0
    # Subjects of this gateway that name no valid token or user id, such as ``newapi:token:x7``.
    malformed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Enforcer:
    """Reconcile one gateway with the store's decisions; see the module docstring."""

    def __init__(self, adapter: Adapter, store: DecisionStore, *, dry_run: bool = False) -> None:
        self.adapter = adapter
        self.store = store
        self.dry_run = dry_run

    def reconcile(self, now: datetime | None = None) -> EnforcementReport:
        """Make one pass; stop early, leaving the rest pending, when the gateway is unreachable."""
        now = now or datetime.now(UTC)
        report = EnforcementReport(self.adapter.name)
        active = self.store.active_decisions(now)
        wanted, report.malformed = wanted_targets(self.adapter, active)
        self._report_unmatched(active, report)
        recorded = self._recorded()
        work = [(target, wanted[target]) for target in sorted(wanted)]
        work += [(target, None) for target in sorted(recorded) if target not in wanted
                 and recorded[target].state in (APPLIED, UNTOUCHED)]

        for position, (target, want) in enumerate(work):
            try:
                if want is None:
                    self._release(target, recorded[target], report)
                else:
                    self._enforce(target, want, recorded.get(target), report)
            except GatewayUnavailable as error:
                report.pending += len(work) - position
                report.errors.append(str(error))
                logger.warning("gateway %s unreachable, %d changes left for the next pass: %s",
                               self.adapter.name, report.pending, error)
                break
        logger.info("gateway %s: %s", self.adapter.name, report)
        return report

    def _report_unmatched(self, active: list, report: EnforcementReport) -> None:
        """Count and log the suspensions of this gateway's subjects that match no token or user."""
        prefix = f"{self.adapter.name}:"
        unmatched = [
            decision.subject for decision in active
            if decision.action == "suspend" and decision.subject.startswith(prefix) and self._matches_nothing(decision)
        ]
        report.unmatched = len(unmatched)
        if unmatched:
            logger.warning(
                "gateway %s: %d suspensions name no token or user in its database, so nothing was disabled "
                "for them (first: %s); check that the gateway file points at the database the logs came from",
                self.adapter.name, len(unmatched), ", ".join(sorted(unmatched)[:5]),
            )

    def _matches_nothing(self, decision) -> bool:
        try:
            return not self.adapter.targets(decision)
        except MalformedSubject:
            return False

    def _enforce(self, target: Target, want: Wanted, row: GatewayEnforcementRow | None, report: EnforcementReport) -> None:
        if row is not None and row.state == UNTOUCHED:
            report.unchanged += 1
            return
        if row is not None and row.state == APPLIED and row.value == want.value:
            report.unchanged += 1
            return
        if row is not None and row.state == REJECTED and (row.value, sorted(row.decision_ids)) == (
                want.value, sorted(want.decision_ids)):
            # Rejected for good: only a new decision on the target makes another attempt.
            report.unchanged += 1
            return

        try:
            current = self.adapter.read(target)
        except LookupError as error:
            self._record(target, want, REJECTED, {}, str(error))
            report.rejected += 1
            return

        first_change = row is None or row.state in (RELEASED, REJECTED)
        if first_change and self.adapter.already_restricted(target, current, want.value):
            self._record(target, want, UNTOUCHED, current, "already restricted before the decision; left to staff")
            report.untouched += 1
            return

        previous = current if first_change else dict(row.previous)
        try:
            self.adapter.apply(target, want.value, want.decision_ids)
        except GatewayRejected as error:
            self._record(target, want, REJECTED, previous, str(error))
            report.rejected += 1
            return
        self._record(target, want, APPLIED, previous, "")
        report.applied += 1

    def _release(self, target: Target, row: GatewayEnforcementRow, report: EnforcementReport) -> None:
        want = Wanted(row.value, list(row.decision_ids))
        if row.state == UNTOUCHED:
            self._record(target, want, RELEASED, dict(row.previous), "decision ended; left as staff set it")
            report.unchanged += 1
            return

        try:
            current = self.adapter.read(target)
        except LookupError as error:
            self._record(target, want, RELEASED, dict(row.previous), str(error))
            report.undone += 1
            return
        # NOTE: the gateway keeps one status per target. A target that staff also disabled
        # by hand after this enforcer did is enabled again here; only an earlier manual change is kept.
        if not self.adapter.still_applied(target, current, row.value):
            self._record(target, want, RELEASED, dict(row.previous), "changed in the gateway since; left as it is")
            report.unchanged += 1
            return
        try:
            self.adapter.undo(target, dict(row.previous), want.decision_ids)
        except GatewayRejected as error:
            message = f"undo of {target.target_type} {target.target} rejected, tried again on the next pass: {error}"
            self._record(target, want, APPLIED, dict(row.previous), message)
            report.pending += 1
            report.errors.append(message)
            logger.warning("gateway %s: %s", self.adapter.name, message)
            return
        self._record(target, want, RELEASED, dict(row.previous), "")
        report.undone += 1

    def _recorded(self) -> dict[Target, GatewayEnforcementRow]:
        query = select(GatewayEnforcementRow).where(GatewayEnforcementRow.gateway == self.adapter.name)
        with Session(self.store.engine) as session:
            rows = session.scalars(query).all()
            session.expunge_all()
        return {Target(row.target_type, row.target, row.action): row for row in rows}

    def _record(self, target: Target, want: Wanted, state: str, previous: dict, message: str) -> None:
        if self.dry_run:
            return
        key = (GatewayEnforcementRow.gateway == self.adapter.name, GatewayEnforcementRow.target_type == target.target_type,
               GatewayEnforcementRow.target == target.target, GatewayEnforcementRow.action == target.action)
        with Session(self.store.engine) as session, session.begin():
            row = session.scalars(select(GatewayEnforcementRow).where(*key)).first()
            if row is None:
                row = GatewayEnforcementRow(gateway=self.adapter.name, target_type=target.target_type,
                                            target=target.target, action=target.action)
                session.add(row)
            row.value = want.value
            row.previous = previous
            row.state = state
            row.decision_ids = list(want.decision_ids)
            row.message = message
            row.updated_at = datetime.now(UTC)
