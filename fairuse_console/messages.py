"""Words the templates translate from data (roles, statuses, actions), listed so extraction finds them.

Update the catalog with the commands in docs/review.md ("Languages"), which keep
its entries sorted and without source locations:
``pybabel extract -F fairuse_console/babel.cfg -k N_ --no-location --sort-output -o messages.pot . &&
pybabel update -i messages.pot -d fairuse_console/locale --no-fuzzy-matching``.
"""


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it here."""
    return message


ROLES = (N_("viewer"), N_("reviewer"), N_("admin"))
STATUSES = (N_("open"), N_("resolved"))
RESOLUTIONS = (N_("suspended"), N_("throttled"), N_("dismissed"), N_("allowlisted"))
SORT_KEYS = (N_("score"), N_("reason"), N_("age"), N_("plan"), N_("status"), N_("updated"))
ACTIONS = (
    N_("suspend"), N_("throttle"), N_("review"), N_("dismiss"), N_("allowlist"), N_("unallowlist"), N_("lift"),
    N_("note"), N_("open_case"), N_("add_decision"),
)
VERDICTS = (N_("abuse"), N_("benign"))
# Review errors with fields that the console shows translated (see fairuse_console.app).
REVIEW_ERRORS = (
    N_("case %(case)s changed at %(time)s, after you opened it (a new decision, note or action); "
       "nothing was done. Reload the case, check what changed and act again"),
    N_("case %(case)s was already resolved by %(staff)s at %(time)s (%(resolution)s). Open a new case to act again"),
)
