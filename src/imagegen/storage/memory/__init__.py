"""The in-memory storage adapter (see adapter.py)."""

from imagegen.storage.memory.adapter import MemoryStorage

__all__ = ["MemoryStorage"]
