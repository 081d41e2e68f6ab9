"""Storage backends behind one `Store` contract (see `engine.store.base`)."""

from engine.store.base import Store, validate_name
from engine.store.local import LocalStore
from engine.store.memory import MemoryStore

__all__ = ["LocalStore", "MemoryStore", "Store", "validate_name"]
