"""Which models the server serves: the model repository, the built-in models, and the engine.

The admin RPCs (``batchmaker.v1.ModelRepository``) and ``batchmaker models`` come
here. Loading reads a version folder off the event loop, then hands the model to
the engine, whose device threads take it between two steps; unloading lets the
version's live requests finish first. One change at a time (a lock), so two
admins loading the same model cannot race. A folder that fails to load is
remembered with its reason (state UNAVAILABLE) and never takes the server down (``serve``
exits at start only when every model to start with failed: ``cli/serve.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchmaker.errors import ModelLoadError, ModelNotFoundError, UnavailableError
from batchmaker.models.base import Model
from batchmaker.repository.store import ModelRepository, check_model_name

if TYPE_CHECKING:
    from batchmaker.runtime.engine import Engine

log = logging.getLogger(__name__)

READY = "READY"
AVAILABLE = "AVAILABLE"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class VersionState:
    """One model version as the repository index reports it."""

    name: str
    version: int
    state: str
    """``READY``, ``AVAILABLE``, ``UNLOADING`` or ``UNAVAILABLE``."""
    reason: str = ""
    """Why it is ``UNAVAILABLE``."""


class ModelManager:
    """The admin API's backend: what can be served, what is, and changes between the two."""

    def __init__(
        self,
        repository: ModelRepository | None = None,
        builtins: Mapping[str, Callable[[], Model]] | None = None,
        *,
        unload_grace_s: float | None = 30.0,
    ) -> None:
        self.repository = repository
        self.builtins = dict(builtins or {})
        """Models built in code (random weights, for tests and benchmarks), version 1; a
        repository model of the same name wins."""
        self.unload_grace_s = unload_grace_s
        self._engine: Engine | None = None
        self._failed: dict[tuple[str, int], str] = {}
        self._unloading: set[tuple[str, int]] = set()
        self._lock = asyncio.Lock()

    # ---- start-up (off the event loop) ------------------------------------------------

    def check_names(self, names: Sequence[str]) -> None:
        """A ``ValueError`` naming the first unknown model (a typo must not start a server
        that serves nothing)."""
        known = self._names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"models: unknown {unknown[0]!r}; known: {', '.join(sorted(known)) or '(none)'}"
            )

    def initial_models(self, names: Sequence[str] = ()) -> list[Model]:
        """The models to start with: each named one's policy versions, or every repository
        model's when none is named. Folders that fail are logged and skipped."""
        self.check_names(names)
        wanted = list(dict.fromkeys(names or self._repository_names()))
        on_disk = [n for n in wanted if self._in_repository(n)]
        models: list[Model] = []
        if self.repository is not None and on_disk:
            models, failed = self.repository.load_all(on_disk)
            for key, why in failed.items():
                name, _, version = key.partition("@")
                self._failed[(name, int(version) if version else 0)] = why
        models += [self.builtins[n]() for n in wanted if n not in on_disk]
        return models

    def attach(self, engine: Engine) -> None:
        self._engine = engine

    # ---- the admin API --------------------------------------------------------------------

    def index(self) -> list[VersionState]:
        """Every version on disk or served, sorted by name then version."""
        states: dict[tuple[str, int], VersionState] = {}
        for name in self._names():
            try:
                versions = self._available(name)
            except ModelLoadError:
                versions = []
            for v in versions:
                states[(name, v)] = VersionState(name, v, AVAILABLE)
        for (name, v), reason in self._failed.items():
            states[(name, v)] = VersionState(name, v, UNAVAILABLE, reason)
        for name, v in self._unloading:
            states[(name, v)] = VersionState(name, v, UNLOADING)
        if self._engine is not None:
            for m in self._engine.models:
                states[(m.name, m.version)] = VersionState(m.name, m.version, READY)
        return [states[k] for k in sorted(states)]

    async def load(self, name: str, versions: Sequence[int] = ()) -> list[VersionState]:
        """Serve ``versions`` of ``name`` (its policy's when empty); see the proto's LoadModel.

        A name that could not be a model folder (``..``, ``a/b``, an absolute path) is
        INVALID_ARGUMENT before anything looks at the disk."""
        check_model_name(name)
        engine = self._require_engine()
        async with self._lock:
            if name not in self._names():
                raise ModelNotFoundError(f"model {name!r} is not in the model repository")
            try:
                wanted = list(versions) or self._selected(name)
            except ModelLoadError as exc:
                self._failed[(name, 0)] = exc.message
                raise
            self._failed.pop((name, 0), None)
            available = self._available(name)
            missing = [v for v in wanted if v not in available]
            if missing:
                raise ModelNotFoundError(f"model {name!r} has no version {missing[0]}")
            if not wanted:
                raise ModelNotFoundError(f"model {name!r}: its version policy selects no version")
            served = {m.version for m in engine.models if m.name == name}
            new = [await asyncio.to_thread(self._read, name, v) for v in wanted if v not in served]
            if new:
                await engine.add_models(new)
                for m in new:  # before answering, as at start-up: no first request pays
                    await engine.infer(m.warmup_request())
            stale = [] if versions else sorted(served - set(wanted))
            if stale:
                await self._unload(name, stale)
            return self._states(name)

    async def unload(self, name: str, versions: Sequence[int] = ()) -> list[VersionState]:
        """Stop serving ``versions`` of ``name`` (every served one when empty)."""
        engine = self._require_engine()
        async with self._lock:
            served = sorted(m.version for m in engine.models if m.name == name)
            if not served:
                raise ModelNotFoundError(f"model {name!r} is not served")
            chosen = list(dict.fromkeys(versions)) or served
            missing = [v for v in chosen if v not in served]
            if missing:
                raise ModelNotFoundError(f"model {name!r} version {missing[0]} is not served")
            await self._unload(name, chosen)
            return self._states(name)

    # ---- internals -------------------------------------------------------------------

    async def _unload(self, name: str, versions: Sequence[int]) -> None:
        engine = self._require_engine()
        marks = {(name, v) for v in versions}
        self._unloading |= marks
        try:
            await engine.remove_models([f"{name}@{v}" for v in versions], self.unload_grace_s)
        finally:
            self._unloading -= marks

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise UnavailableError("the server is starting; its models are not loaded yet")
        return self._engine

    def _states(self, name: str) -> list[VersionState]:
        return [s for s in self.index() if s.name == name]

    def _repository_names(self) -> list[str]:
        return [] if self.repository is None else list(self.repository.versions())

    def _names(self) -> set[str]:
        return set(self._repository_names()) | set(self.builtins)

    def _in_repository(self, name: str) -> bool:
        return self.repository is not None and name in self.repository.versions()

    def _available(self, name: str) -> list[int]:
        if self._in_repository(name):
            assert self.repository is not None
            return list(self.repository.model_versions(name))
        return [1] if name in self.builtins else []

    def _selected(self, name: str) -> list[int]:
        if self._in_repository(name):
            assert self.repository is not None
            return self.repository.selected_versions(name)
        return [1]

    def _read(self, name: str, version: int) -> Model:
        """Build or read one version; a failure is remembered for the index, then raised."""
        try:
            if self._in_repository(name):
                assert self.repository is not None
                model = self.repository.load(name, version)
            else:
                model = self.builtins[name]()
        except ModelLoadError as exc:
            self._failed[(name, version)] = exc.message
            raise
        self._failed.pop((name, version), None)
        return model
