"""A model's declarative config (``config.json``) <-> the model it describes.

The config names one of the families this server implements and its sizes,
limits and vocabularies; nothing in it is executed. ``build_model`` refuses a bad
or unknown field with ``ModelLoadError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchmaker.errors import ModelLoadError
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from cells import BinaryTreeLSTMCell, EncoderCell, GreedyDecoderCell, RecurrentStackCell

FAMILIES = ("lstm", "gru", "seq2seq", "treelstm")


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
