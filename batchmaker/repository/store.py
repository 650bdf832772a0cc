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
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from batchmaker.errors import ModelLoadError, ModelNotFoundError
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from cells import BinaryTreeLSTMCell, EncoderCell, GreedyDecoderCell, RecurrentStackCell

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
POLICY_FILE = "model.json"
FAMILIES = ("lstm", "gru", "seq2seq", "treelstm")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ---- config <-> model ---------------------------------------------------------------


def model_config(model: Model) -> dict[str, Any]:
    """The declarative config that rebuilds ``model``'s architecture (weights aside)."""
    cfg: dict[str, Any]
    if isinstance(model, SequenceModel):
        c = model.cell
        cfg = {
            "family": c.kind,
            "hidden_size": c.hidden_size,
            "num_layers": c.num_layers,
            "max_input_length": model.max_input_len,
        }
        if c.embedding is not None:
            cfg["vocab_size"] = c.input_dim
            cfg["embedding_dim"] = c.embedding.embedding_dim
        else:
            cfg["input_dim"] = c.input_dim
        if c.proj is not None:
            cfg["output_dim"] = c.output_dim
        if model.vocabulary:
            cfg["vocabulary"] = list(model.vocabulary)
        if model.output_vocabulary:
            cfg["output_vocabulary"] = list(model.output_vocabulary)
    elif isinstance(model, Seq2SeqModel):
        enc, dec = model.encoder, model.decoder
        assert enc.embedding is not None
        assert dec.embedding is not None
        cfg = {
            "family": "seq2seq",
            "cell": enc.kind,
            "hidden_size": enc.hidden_size,
            "num_layers": enc.num_layers,
            "source_vocab_size": enc.input_dim,
            "target_vocab_size": dec.input_dim,
            "source_embedding_dim": enc.embedding.embedding_dim,
            "target_embedding_dim": dec.embedding.embedding_dim,
            "bos": model.bos,
            "eos": model.eos,
            "max_input_length": model.max_input_len,
            "max_output_length": model.max_decode_len,
        }
        if model.source_vocabulary:
            cfg["source_vocabulary"] = list(model.source_vocabulary)
        if model.target_vocabulary:
            cfg["target_vocabulary"] = list(model.target_vocabulary)
    elif isinstance(model, TreeModel):
        cell = model.cell
        cfg = {
            "family": "treelstm",
            "vocab_size": cell.input_dim,
            "embedding_dim": cell.embedding.embedding_dim,
            "hidden_size": cell.hidden_size,
            "num_classes": cell.output_dim,
            "max_nodes": model.max_nodes,
            "max_depth": model.max_depth,
        }
        if model.vocabulary:
            cfg["vocabulary"] = list(model.vocabulary)
        if model.classes:
            cfg["classes"] = list(model.classes)
    else:
        raise TypeError(f"cannot describe a {type(model).__name__} as a repository config")
    if model.max_batch:
        cfg["max_batch"] = dict(model.max_batch)
    if model.example:
        cfg["example"] = model.example
    return cfg


class _Config:
    """Typed reads from a config dict; every error names the field and the file."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where
        self.used: set[str] = set()

    def error(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"{self.where}: {message}")

    def integer(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        self.used.add(key)
        value = self.raw.get(key, default)
        if value is None:
            raise self.error(f"{key!r} is required")
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(f"{key!r} must be an integer >= {minimum}, got {value!r}")
        return value

    def opt_int(self, key: str) -> int | None:
        return self.integer(key) if key in self.raw else None

    def words(self, key: str) -> list[str]:
        self.used.add(key)
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise self.error(f"{key!r} must be a list of strings")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str:
        self.used.add(key)
        value = self.raw.get(key, default)
        if value not in choices:
            raise self.error(f"{key!r} must be one of {list(choices)}, got {value!r}")
        return str(value)

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used - {"family", "max_batch", "example"})
        if unknown:
            raise self.error(f"unknown field {unknown[0]!r}")


def build_model(name: str, version: int, raw: Mapping[str, Any], where: str = "config") -> Model:
    """The model a config describes, with freshly initialised weights (load them next)."""
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    cfg = _Config(raw, where)
    family = cfg.choice("family", FAMILIES)
    model: Model
    try:
        if family in ("lstm", "gru"):
            vocab, input_dim = cfg.opt_int("vocab_size"), cfg.opt_int("input_dim")
            if (vocab is None) == (input_dim is None):
                raise cfg.error(
                    "give exactly one of 'vocab_size' (tokens) or 'input_dim' (vectors)"
                )
            cell = RecurrentStackCell(
                family,  # type: ignore[arg-type]
                hidden_size=cfg.integer("hidden_size"),
                num_layers=cfg.integer("num_layers", 1),
                vocab_size=vocab,
                input_dim=input_dim,
                embedding_dim=cfg.opt_int("embedding_dim"),
                output_dim=cfg.opt_int("output_dim"),
            )
            model = SequenceModel(
                name,
                cell,
                version=version,
                max_input_len=cfg.integer("max_input_length", 1024),
                vocabulary=cfg.words("vocabulary"),
                output_vocabulary=cfg.words("output_vocabulary"),
            )
        elif family == "seq2seq":
            kind = cfg.choice("cell", ("lstm", "gru"), "lstm")
            hidden, layers = cfg.integer("hidden_size"), cfg.integer("num_layers", 1)
            target = cfg.integer("target_vocab_size")
            encoder = EncoderCell(
                kind,  # type: ignore[arg-type]
                hidden_size=hidden,
                num_layers=layers,
                vocab_size=cfg.integer("source_vocab_size"),
                embedding_dim=cfg.opt_int("source_embedding_dim"),
            )
            decoder = GreedyDecoderCell(
                kind,  # type: ignore[arg-type]
                hidden_size=hidden,
                num_layers=layers,
                vocab_size=target,
                embedding_dim=cfg.opt_int("target_embedding_dim"),
                output_dim=target,
            )
            model = Seq2SeqModel(
                name,
                encoder,
                decoder,
                bos=cfg.integer("bos", minimum=0),
                eos=cfg.integer("eos", minimum=0),
                version=version,
                max_input_len=cfg.integer("max_input_length", 256),
                max_decode_len=cfg.integer("max_output_length", 256),
                source_vocabulary=cfg.words("source_vocabulary"),
                target_vocabulary=cfg.words("target_vocabulary"),
            )
        else:
            tree_cell = BinaryTreeLSTMCell(
                vocab_size=cfg.integer("vocab_size"),
                hidden_size=cfg.integer("hidden_size"),
                num_classes=cfg.integer("num_classes"),
                embedding_dim=cfg.opt_int("embedding_dim") or 0,
            )
            model = TreeModel(
                name,
                tree_cell,
                version=version,
                max_nodes=cfg.integer("max_nodes", 256),
                max_depth=cfg.integer("max_depth", 64),
                vocabulary=cfg.words("vocabulary"),
                classes=cfg.words("classes"),
            )
    except ValueError as exc:  # the model's own consistency checks (bos in range, ...)
        raise cfg.error(str(exc)) from None
    except (RuntimeError, TypeError, OverflowError, MemoryError) as exc:  # sizes torch refuses
        raise cfg.error(f"cannot build this architecture ({type(exc).__name__}: {exc})") from None
    cfg.finish()
    max_batch = raw.get("max_batch", {})
    if not isinstance(max_batch, Mapping):
        raise cfg.error("'max_batch' must be an object of cell type -> integer")
    for cell_name, n in max_batch.items():
        if cell_name not in model.cells:
            raise cfg.error(
                f"max_batch: no cell type {cell_name!r} in a {family} model "
                f"(it has {sorted(model.cells)})"
            )
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise cfg.error(f"max_batch[{cell_name!r}] must be an integer >= 1, got {n!r}")
    model.max_batch = dict(max_batch)
    example = raw.get("example", "")
    if not isinstance(example, str):
        raise cfg.error("'example' must be a string (flags for batchmaker infer)")
    model.example = example
    return model


# ---- weights ------------------------------------------------------------------------


def model_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """Every parameter, keyed ``<cell>.<parameter>`` (``encoder.rnn.weight_ih_l0``)."""
    return {
        f"{cell_name}.{key}": tensor.detach().contiguous()
        for cell_name, cell in model.cells.items()
        for key, tensor in cell.state_dict().items()
    }


def check_shapes(
    want: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """``ModelLoadError`` for the first missing, extra or misshapen tensor."""
    missing = sorted(set(want) - set(got))
    if missing:
        raise ModelLoadError(f"{where}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ModelLoadError(f"{where}: unexpected tensor {extra[0]!r} for this config")
    for key, shape in want.items():
        if tuple(got[key]) != tuple(shape):
            raise ModelLoadError(
                f"{where}: tensor {key!r} has shape {list(got[key])}, the config implies "
                f"{list(shape)}"
            )


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in tensors.items()}


def load_weights(model: Model, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` into ``model``, or ``ModelLoadError`` for any missing, extra or
    misshapen tensor (all checked before anything is copied)."""
    want = model_state_dict(model)
    check_shapes(_shapes(want), _shapes(tensors), where)
    for key in want:
        got = tensors[key]
        if not got.is_floating_point():
            raise ModelLoadError(f"{where}: tensor {key!r} is {got.dtype}, not floating point")
        if not torch.isfinite(got).all():
            raise ModelLoadError(f"{where}: tensor {key!r} contains NaN or Inf")
    for cell_name, cell in model.cells.items():
        prefix = f"{cell_name}."
        cell.load_state_dict(
            {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        )


def save_model(model: Model, root: str | Path) -> Path:
    """Write ``model`` as ``<root>/<name>/<version>/``; returns that folder."""
    folder = Path(root) / model.name / str(model.version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model_config(model), indent=2) + "\n")
    save_file(model_state_dict(model), str(folder / WEIGHTS_FILE))
    return folder


class _SkipInit(TorchFunctionMode):
    """Parameter initialisers do nothing: on the meta device there is nothing to fill.

    Not a nicety: ``normal_`` on a meta tensor runs a Python reference implementation
    whose first call imports ``torch._dynamo``, which cost 1.9 s of every cold start
    (docs/benchmarks.md, "Cold start").
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INITIALISERS:
            # torch.nn.init passes the tensor by keyword; Tensor methods by position.
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


_INITIALISERS = frozenset(
    {"normal_", "uniform_", "zero_", "fill_", "orthogonal_", "kaiming_uniform_", "trunc_normal_"}
)


def load_model(folder: str | Path, name: str, version: int) -> Model:
    """Read one version folder; ``ModelLoadError`` says what is wrong with it."""
    folder = Path(folder)
    where = f"{name}/{version}"
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelLoadError(f"{where}: missing {path.name}")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{where}/{CONFIG_FILE}: not valid JSON ({exc})") from None
    # The architecture is first built on the meta device (shapes, no memory) and checked
    # against the file's header, so a config that is wrong, or huge, costs nothing.
    with torch.device("meta"), _SkipInit():
        skeleton = build_model(name, version, raw, f"{where}/{CONFIG_FILE}")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        check_shapes(_shapes(model_state_dict(skeleton)), header, f"{where}/{WEIGHTS_FILE}")
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        msg = f"{where}/{WEIGHTS_FILE}: not a readable safetensors file ({exc})"
        raise ModelLoadError(msg) from None
    model = build_model(name, version, raw, f"{where}/{CONFIG_FILE}")
    load_weights(model, tensors, f"{where}/{WEIGHTS_FILE}")
    return model


# ---- the repository ---------------------------------------------------------------------


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
            if not model_dir.is_dir() or not _NAME_RE.match(model_dir.name):
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
