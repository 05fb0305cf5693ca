"""Case statuses and staff roles, in a module light enough for the command line to import at start."""

CASE_STATUSES = ("open", "resolved")
ROLES = ("viewer", "reviewer", "admin")
