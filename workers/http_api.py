"""HTTP decisions API for gateways that cannot read Redis themselves.

``GET /v1/decisions`` checks one request's key, account and address, as
``fairuse_gateway.DecisionClient.check`` does. ``GET /v1/decisions/stream``
returns ``{"new": [...], "deleted": [...], "pulled_at": ...}``. With ``startup=true`` it lists
every enforced decision in force, the strongest per subject, so a subject
appears once. Otherwise it lists the changes since that gateway's previous
pull, or since ``since`` (the ``pulled_at`` of the caller's previous
response), and a subject whose decision ended but which still has another in
force gets that one in ``new`` again. Every call
needs an ``X-Api-Key`` issued by ``fairuse gateways add NAME``. FastAPI serves
the OpenAPI description at ``/openapi.json`` and ``/docs``.
"""


# No ``from __future__ import annotations`` here: FastAPI reads the endpoint
# annotations at run time, and string annotations of a local dependency fail.
import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from detector.decisions import ACTION_RANK, Decision
from detector.store import DecisionStore
from detector.store.gateways import Gateway, GatewayRegistry
from fairuse_gateway import DecisionClient

logger = logging.getLogger(__name__)


class VerdictOut(BaseModel):
    """The verdict for one request: the action a gateway takes and why."""

    action: str
    subject_type: str = ""
    subject: str = ""
    reasons: list[str] = []
    limit_rpm: int | None = None
    scope: str = "all"
    expires_at: datetime | None = None
    decision_id: str = ""
    fail_open: bool = False


class ImageDecisionOut(BaseModel):
    """A decision stricter than the subject's main one, for image endpoints only."""

    id: str
    action: str
    limit_rpm: int | None
    reasons: list[str]
    expires_at: datetime


class DecisionOut(BaseModel):
    """One enforced decision, without its evidence.

    ``images`` is set when the subject also has an image-only decision that
    limits image requests more than this one does, such as a tighter
    image-only throttle beside a throttle of all endpoints.
    """

    id: str
    subject_type: str
    subject: str
    action: str
    scope: str
    limit_rpm: int | None
    reasons: list[str]
    score: float
    detected_at: datetime
    expires_at: datetime
    images: ImageDecisionOut | None = None


class StreamOut(BaseModel):
    """Changes since the previous pull; pass ``pulled_at`` as ``since`` in the next one."""

    new: list[DecisionOut]
    deleted: list[DecisionOut]
    pulled_at: datetime


def create_app(store: DecisionStore, client: DecisionClient) -> FastAPI:
    """Build the API around a decision store and a Redis decision client."""
    registry = GatewayRegistry(store.engine)
    app = FastAPI(title="fairuse decisions API", version="1")

    api_key_header = APIKeyHeader(name="X-Api-Key", auto_error=False, description="Key from 'fairuse gateways add NAME'.")

    def gateway(x_api_key: Annotated[str | None, Security(api_key_header)] = None) -> Gateway:
        found = registry.authenticate(x_api_key)
        if found is None:
            logger.warning("rejected a decisions API call with a missing or unknown X-Api-Key")
            raise HTTPException(status_code=401, detail="missing or invalid X-Api-Key; issue one with 'fairuse gateways add NAME'")
        return found

    unauthorized = {401: {"description": "Missing or invalid X-Api-Key."}}

    @app.get("/v1/decisions", response_model=VerdictOut, responses={**unauthorized, 422: {"description": "No subject given."}})
    def check(
        caller: Annotated[Gateway, Depends(gateway)],
        key_id: str | None = None,
        account_id: str | None = None,
        ip: str | None = None,
        endpoint: Annotated[str | None, Query(description="The request's path; leaves out decisions that do not apply to it.")] = None,
    ) -> VerdictOut:
        """Return the strongest decision in force on the key, the account or the address."""
        if not (key_id or account_id or ip):
            raise HTTPException(status_code=422, detail="give at least one of key_id, account_id and ip")
        verdict = client.check(key_id=key_id, account_id=account_id, ip=ip, endpoint=endpoint)
        expires = datetime.fromtimestamp(verdict.expires_at, UTC) if verdict.expires_at else None
        return VerdictOut(
            action=verdict.action, subject_type=verdict.subject_type, subject=verdict.subject,
            reasons=list(verdict.reasons), limit_rpm=verdict.limit_rpm, scope=verdict.scope,
            expires_at=expires, decision_id=verdict.decision_id, fail_open=verdict.fail_open,
        )

    @app.get("/v1/decisions/stream", response_model=StreamOut, responses=unauthorized)
    def stream(
        caller: Annotated[Gateway, Depends(gateway)],
        startup: Annotated[bool, Query(description="Return every decision in force instead of the changes.")] = False,
        since: Annotated[datetime | None, Query(
            description="The pulled_at of this process's previous response. Without it, the changes since the "
                        "previous pull with this X-Api-Key, which another process sharing the key may have made.",
        )] = None,
    ) -> StreamOut:
        """Return new and deleted decisions since ``since``, else since this gateway's previous pull."""
        if since is not None and since.tzinfo is None:
            raise HTTPException(status_code=422, detail=f"invalid since {since.isoformat()}: missing time zone; pass pulled_at as returned")
        now = datetime.now(UTC)
        start = caller.last_pull_at if since is None else since
        if startup or start is None:
            in_force = store.active_decisions(now)
            new, deleted = _strongest_per_subject(in_force), []
        else:
            changed, deleted = store.changes_between(start, now)
            in_force = _in_force_of(store, changed + deleted, now)
            new = _strongest_per_subject(changed + in_force)
        registry.mark_pulled(caller.name, now)
        image_limits = _image_overrides(new, in_force)
        return StreamOut(
            new=[_out(decision, image_limits.get(decision.id)) for decision in new],
            deleted=[_out(decision) for decision in deleted],
            pulled_at=now,
        )

    return app


def _in_force_of(store: DecisionStore, decisions: list[Decision], now: datetime) -> list[Decision]:
    """Return the enforced decisions in force of the subjects of ``decisions``.

    For each subject that gained or lost a decision, the strongest of these
    goes out in ``new``, as in the startup snapshot. A gateway that keeps one
    entry per subject would otherwise take a new, looser decision in place of
    a stricter one, or drop a subject on "deleted" and so lift a longer,
    weaker decision that overlapped the one that ended.
    """
    subjects = {(decision.subject_type, decision.subject) for decision in decisions}
    if not subjects:
        return []
    return [decision for decision in store.decisions_for(subjects) if not decision.simulated and decision.in_force_at(now)]


def _image_overrides(chosen: list[Decision], in_force: list[Decision]) -> dict[str, Decision]:
    """Return, by id of a chosen decision, the subject's image-only decision that is stricter for image requests."""
    chosen_by_subject = {(decision.subject_type, decision.subject): decision for decision in chosen}
    overrides: dict[str, Decision] = {}
    for decision in in_force:
        main = chosen_by_subject.get((decision.subject_type, decision.subject))
        if main is None or decision.scope != "images" or main.scope == "images":
            continue
        current = overrides.get(main.id, main)
        if _image_strength(decision) > _image_strength(current):
            overrides[main.id] = decision
    return overrides


def _image_strength(decision: Decision) -> tuple[int, int, datetime]:
    """Order decisions by how much they limit an image request; scope no longer matters there."""
    return (ACTION_RANK[decision.action], -(decision.limit_rpm or 0), decision.expires_at)


def _strongest_per_subject(decisions: list[Decision]) -> list[Decision]:
    best: dict[tuple[str, str], Decision] = {}
    for decision in decisions:
        subject = (decision.subject_type, decision.subject)
        current = best.get(subject)
        if current is None or _strength(decision) > _strength(current):
            best[subject] = decision
    return sorted(best.values(), key=lambda decision: (decision.subject_type, decision.subject))


def _strength(decision: Decision) -> tuple[bool, int, bool, int, datetime]:
    # A throttle or suspension of all endpoints comes first, so a stricter image-only decision goes
    # out beside it in ``images`` instead of hiding it. A lower throttle limit is stronger; a longer
    # decision wins a tie.
    limits_all = decision.scope == "all" and decision.action != "review"
    return (limits_all, ACTION_RANK[decision.action], decision.scope == "all", -(decision.limit_rpm or 0),
            decision.expires_at)


def _out(decision: Decision, images: Decision | None = None) -> DecisionOut:
    image_out = None
    if images is not None:
        image_out = ImageDecisionOut(
            id=images.id, action=images.action, limit_rpm=images.limit_rpm, reasons=images.reasons,
            expires_at=images.expires_at,
        )
    return DecisionOut(
        id=decision.id, subject_type=decision.subject_type, subject=decision.subject, action=decision.action,
        scope=decision.scope, limit_rpm=decision.limit_rpm, reasons=decision.reasons, score=decision.score,
        detected_at=decision.detected_at, expires_at=decision.expires_at, images=image_out,
    )
