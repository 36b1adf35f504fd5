"""The Firestore adapter: the case study's collections behind `imagegen.ports.Storage`."""

from imagegen.storage.firestore.adapter import FirestoreStorage

__all__ = ["FirestoreStorage"]
