"""Staff review: the case queue, staff actions with their audit trail, accounts and charts' data.

The web console (``fairuse_console``) and the ``fairuse`` review commands
both work through this package; neither writes a table of its own.
"""
