"""The decision store: the only code that writes decisions."""

from detector.store.database import DATABASE_ENV, DEFAULT_URL, open_store
from detector.store.repository import DecisionStore

__all__ = ["DATABASE_ENV", "DEFAULT_URL", "DecisionStore", "open_store"]
