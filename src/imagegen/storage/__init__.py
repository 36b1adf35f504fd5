"""Storage adapters behind the `imagegen.ports.Storage` port, chosen by the database URL's scheme."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagegen.ports import Storage

FIRESTORE_SCHEME = "firestore://"


def open_storage_adapter(url: str) -> Storage:
    """sqlite:///path and postgresql://... open the SQL adapter; firestore://PROJECT[/DATABASE] Firestore.

    Firestore honours FIRESTORE_EMULATOR_HOST (the emulator) and otherwise Application Default
    Credentials. Each adapter's driver is imported only when its scheme is used.
    """
    if url.startswith(FIRESTORE_SCHEME):
        from imagegen.storage.firestore import FirestoreStorage

        return FirestoreStorage.from_url(url)
    from imagegen.storage.sql.adapter import SqlStorage

    return SqlStorage(url)
