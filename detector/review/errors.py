"""Errors of staff review, with messages meant for the staff member who caused them."""


class ReviewError(ValueError):
    """Raised for a request staff can fix: an unknown case, an invalid duration, a decision no longer in force."""


class NotFoundError(ReviewError):
    """Raised when a case, decision, entry or staff account does not exist."""


class PublishError(ReviewError):
    """Raised when Redis did not take a staff action; nothing was stored then."""


class ConflictError(ReviewError):
    """Raised when another staff member changed the same case first, such as a case already resolved."""


class ResolvedCaseError(ConflictError):
    """Raised when an action names a case that another staff member, or an earlier action, already resolved."""

    # The message with its fields, which the console translates (fairuse_console.messages lists it).
    TEMPLATE = "case %(case)s was already resolved by %(staff)s at %(time)s (%(resolution)s). Open a new case to act again"

    def __init__(self, case: int, staff: str, time: str, resolution: str) -> None:
        self.values = {"case": case, "staff": staff, "time": time, "resolution": resolution}
        super().__init__(self.TEMPLATE % self.values)


class StaleCaseError(ConflictError):
    """Raised when a case changed after the staff member opened it, so the action would rest on an old view."""

    # The message with its fields, which the console translates (fairuse_console.messages lists it).
    TEMPLATE = (
        "case %(case)s changed at %(time)s, after you opened it (a new decision, note or action); "
        "nothing was done. Reload the case, check what changed and act again"
    )

    def __init__(self, case: int, time: str) -> None:
        self.values = {"case": case, "time": time}
        super().__init__(self.TEMPLATE % self.values)
