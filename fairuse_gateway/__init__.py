"""Gateway side of fairuse: check a request's key, account and address against current decisions."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fairuse_gateway.client import DecisionClient, Verdict

__all__ = ["DecisionClient", "Verdict"]


def __getattr__(name: str):
    # The client imports redis. Loaded on first use, so importing fairuse_gateway.partitions stays light.
    if name in __all__:
        from fairuse_gateway import client

        return getattr(client, name)
    raise AttributeError(f"module 'fairuse_gateway' has no attribute {name!r}")
