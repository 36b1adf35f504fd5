"""The catalog (models, styles, colors, sizes) and its configuration version on Firestore.

Every edit, and every key revocation (keys.py), writes a new version in the same write: a process
that priced a create from a cached copy finds out at the debit (StaleConfig) and redoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.errors import InvalidInput
from imagegen.storage.firestore import docs as d
from imagegen.storage.firestore.errors import run_transaction, translated
from imagegen.storage.firestore.parts import CONFIG_VERSION, FirestoreParts, Transaction, version_of


class FirestoreCatalog(FirestoreParts):
    @translated
    def config_version(self) -> str:
        snap = self._meta(CONFIG_VERSION).get()
        return version_of(snap)

    @translated
    def config_snapshot(self) -> tuple[str, Catalog]:
        # The version first: a catalog newer than its version only costs a refresh, the reverse
        # would price with an old catalog under a new version.
        version = self.config_version()
        return version, self.catalog()

    @translated
    def catalog(self) -> Catalog:
        models = {
            snap.id: model_from(snap.id, snap.to_dict() or {})
            for snap in self.db.collection(d.MODELS).stream()
        }
        enabled = {kind: self._enabled(kind) for kind in d.OPTION_KINDS}
        sizes = {snap_id: int(data["cost"]) for snap_id, data in enabled["sizes"]}
        return Catalog(
            models,
            frozenset(name for name, _ in enabled["styles"]),
            frozenset(name for name, _ in enabled["colors"]),
            sizes,
        )

    @translated
    def model_settings(self, name: str) -> ModelSettings | None:
        snap = self.db.collection(d.MODELS).document(name).get()
        return model_from(name, snap.to_dict() or {}) if snap.exists else None

    def _enabled(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        found = ((snap.id, snap.to_dict() or {}) for snap in self.db.collection(kind).stream())
        return [(name, data) for name, data in found if data.get("enabled", True)]

    @translated
    def put_model(self, model: ModelSettings) -> None:
        batch = self.db.batch()
        batch.set(self.db.collection(d.MODELS).document(model.name), model_doc(model))
        self._bump_config(batch)
        batch.commit()

    @translated
    def update_model(
        self, name: str, change: Callable[[ModelSettings | None], ModelSettings]
    ) -> ModelSettings:
        ref = self.db.collection(d.MODELS).document(name)

        def update(tx: Transaction) -> ModelSettings:
            snap = ref.get(transaction=tx)
            current = model_from(name, snap.to_dict() or {}) if snap.exists else None
            updated = change(current)
            if updated != current:
                tx.set(ref, model_doc(updated))
                self._bump_config(tx)
            return updated

        return run_transaction(self.db, update)

    @translated
    def put_option(self, kind: str, name: str, *, enabled: bool, cost: int | None = None) -> None:
        if kind not in d.OPTION_KINDS:
            raise InvalidInput(f"Unknown catalog kind '{kind}'")
        ref = self.db.collection(kind).document(name)
        values: dict[str, Any] = {"enabled": enabled}
        if cost is not None:
            values["cost"] = cost

        def put(tx: Transaction) -> None:
            if not ref.get(transaction=tx).exists and kind == "sizes" and cost is None:
                raise InvalidInput(f"A new size needs a cost: '{name}' is not in the catalog yet")
            tx.set(ref, values, merge=True)
            self._bump_config(tx)

        run_transaction(self.db, put)


def model_from(name: str, data: dict[str, Any]) -> ModelSettings:
    return ModelSettings(
        name,
        float(data.get("failureRate", 0.05)),
        int(data.get("latencyMs", 300)),
        bool(data.get("enabled", True)),
        deployments=tuple(data.get("deployments") or ()),
        prices={str(size): int(credits) for size, credits in (data.get("prices") or {}).items()},
    )


def model_doc(model: ModelSettings) -> dict[str, Any]:
    """models/{name}: failureRate, latencyMs, enabled, deployments (the binding), prices {size: credits}.

    The whole document is written on every edit (`set`, not a merge): an unbound model's
    `deployments` is an empty list, so unbinding leaves nothing behind.
    """
    return {
        "failureRate": model.failure_rate,
        "latencyMs": model.latency_ms,
        "enabled": model.enabled,
        "deployments": [dict(d) for d in model.deployments],
        "prices": dict(model.prices),
    }
