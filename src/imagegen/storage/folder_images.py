"""Image storage: the local folder adapter (the default; also fine on a shared network mount).

The file calls run on a thread: a network mount can take its time, and the event loop must not wait.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from imagegen.domain.generation import valid_id


class FolderImageStore:
    """Stores `<id>.png` under a two-character shard folder, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: set[Path] = set()  # shard folders known to exist: one mkdir each, not one a write

    async def put(self, image_id: str, png: bytes) -> str:
        return await asyncio.to_thread(self._write, image_id, png)

    async def open(self, image_id: str) -> bytes | None:
        if not valid_id(image_id):
            return None
        return await asyncio.to_thread(self._read, image_id)

    def _write(self, image_id: str, png: bytes) -> str:
        path = self._path(image_id)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except FileNotFoundError:  # the folder was removed behind our back: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(png)
        os.replace(tmp, path)
        return f"/images/{image_id}.png"

    def _read(self, image_id: str) -> bytes | None:
        try:
            return self._path(image_id).read_bytes()
        except FileNotFoundError:
            return None

    def _path(self, image_id: str) -> Path:
        if not valid_id(image_id):
            raise ValueError(f"invalid image id {image_id!r}")
        return self.root / image_id[:2] / f"{image_id}.png"
