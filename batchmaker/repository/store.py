"""The model repository: models and versions on disk, declarative configs and safetensors.

Layout (Triton's, minus its config language)::

    <repository>/
      <model>/
        model.json            optional: {"version_policy": ...}
        <version>/            a positive integer
          config.json         the architecture: family, dimensions, limits, vocabularies
          model.safetensors   the weights, keyed <cell>.<parameter>

Nothing in a repository is executed: the config is JSON and names one of the
families this server implements, the weights are safetensors (no pickle), and
``batchmaker import`` reads a user's ``state_dict`` with ``torch.load(weights_only=True)``.
A folder that cannot be loaded (a missing file, an unknown family, a bad config,
a missing, extra or misshapen tensor, a corrupt file) raises ``ModelLoadError``
naming the folder and the problem; the server reports it and serves the rest.

Version policy (``model.json``), as Triton's: ``"latest"`` (the default: the
highest version), ``{"latest": N}``, ``"all"``, or ``{"specific": [1, 3]}``.

This module owns the repository as a whole (names, versions, policies); one version
folder is ``folder.py``'s, and its ``config.json`` is ``configs.py``'s.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchmaker.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from batchmaker.models.base import Model
from batchmaker.repository.folder import load_model

log = logging.getLogger(__name__)

POLICY_FILE = "model.json"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
"""What a model name may be. A name becomes a folder under the repository root, so no
separator, no ``.``/``..`` and no absolute path: a name can never reach outside it."""


def is_model_name(name: str) -> bool:
    """Whether ``name`` may name a model folder (``NAME_RULE``)."""
    return _NAME_RE.fullmatch(name) is not None


def check_model_name(name: str, *, what: str = "model name") -> str:
    """``name``, or an ``InvalidRequestError`` (INVALID_ARGUMENT) naming ``what`` when it
    breaks ``NAME_RULE``: checked before a name touches the filesystem, at import and at
    load, so a caller's string is never a path."""
    if not is_model_name(name):
        raise InvalidRequestError(f"{what} {name!r} is not a valid model name: {NAME_RULE}")
    return name


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions on disk are served when no version is named."""

    kind: str = "latest"
    """``latest``, ``all`` or ``specific``."""
    num_versions: int = 1
    """``latest``: how many of the highest versions."""
    versions: tuple[int, ...] = ()
    """``specific``: exactly these."""

    @classmethod
    def parse(cls, value: Any, where: str) -> VersionPolicy:
        if value in ("latest", None):
            return cls()
        if value == "all":
            return cls("all")
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, arg),) = value.items()
            if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg > 0:
                return cls("latest", num_versions=arg)
            if (
                kind == "specific"
                and isinstance(arg, list)
                and arg
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in arg)
            ):
                return cls("specific", versions=tuple(sorted(set(arg))))
        raise ModelLoadError(
            f'{where}: version_policy must be "latest", "all", {{"latest": N}} or '
            f'{{"specific": [versions]}}, got {value!r}'
        )

    def select(self, available: Sequence[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in self.versions if v in ordered]
        return ordered[-self.num_versions :]


class ModelRepository:
    """A directory of models; read afresh on every call, so files can change while serving."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"model repository {str(self.root)!r} is not a directory")

    def versions(self) -> dict[str, dict[int, Path]]:
        """Every model folder and its version folders (integer names), sorted."""
        out: dict[str, dict[int, Path]] = {}
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not is_model_name(model_dir.name):
                continue
            found = {
                int(v.name): v
                for v in model_dir.iterdir()
                # Canonical numbers only: "01" would alias "1".
                if v.is_dir() and v.name.isdigit() and len(v.name) <= 18 and v.name[0] != "0"
            }
            out[model_dir.name] = dict(sorted(found.items()))
        return out

    def model_versions(self, name: str) -> dict[int, Path]:
        found = self.versions().get(name)
        if found is None:
            raise ModelNotFoundError(f"model {name!r} is not in the repository {str(self.root)!r}")
        return found

    def policy(self, name: str) -> VersionPolicy:
        path = self.root / name / POLICY_FILE
        if not path.is_file():
            return VersionPolicy()
        where = f"{name}/{POLICY_FILE}"
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(raw, Mapping) or set(raw) - {"version_policy"}:
            raise ModelLoadError(f'{where}: expected {{"version_policy": ...}}')
        return VersionPolicy.parse(raw.get("version_policy"), where)

    def selected_versions(self, name: str) -> list[int]:
        """The versions the model's policy serves (none if its folder holds none)."""
        return self.policy(name).select(list(self.model_versions(name)))

    def load(self, name: str, version: int) -> Model:
        folder = self.model_versions(name).get(version)
        if folder is None:
            raise ModelNotFoundError(f"model {name!r} has no version {version} in the repository")
        return load_model(folder, name, version)

    def load_all(self, names: Sequence[str] | None = None) -> tuple[list[Model], dict[str, str]]:
        """The policy versions of ``names`` (every model's by default), and what could not
        be loaded (``name@version``, or ``name`` for a bad policy, -> why).

        A bad folder is logged and skipped: it must not keep the rest from serving.
        """
        models: list[Model] = []
        failed: dict[str, str] = {}
        for name in self.versions() if names is None else names:
            try:
                selected = self.selected_versions(name)
            except ModelLoadError as exc:
                failed[name] = exc.message
                log.error("model %s not loaded: %s", name, exc.message)
                continue
            for version in selected:
                try:
                    models.append(self.load(name, version))
                except ModelLoadError as exc:
                    failed[f"{name}@{version}"] = exc.message
                    log.error("model %s@%d not loaded: %s", name, version, exc.message)
        return models, failed
