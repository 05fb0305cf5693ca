"""Gateway side of fairuse: check a request's key, account and address against current decisions."""

from fairuse_gateway.client import DecisionClient, Verdict

__all__ = ["DecisionClient", "Verdict"]
