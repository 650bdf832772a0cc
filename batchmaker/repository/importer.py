"""``batchmaker import``: a user's trained torch ``state_dict`` -> a model repository version.

Users train with ``nn.LSTM``/``nn.GRU`` (often with an ``nn.Embedding`` in front and an
``nn.Linear`` behind) or an encoder-decoder of two such stacks. Their module names
vary, so the architecture is read off the tensors, not the names: the recurrent
module is found by its ``weight_ih_l0`` key, its kind by its gate count, its layers
by counting, the embedding as the ``[vocab, input]`` matrix that feeds it, the
projection as the ``[out, hidden]`` linear layer behind it. Where that is ambiguous
the user names the prefixes. A checkpoint is read with ``torch.load(weights_only=True)``
(no pickled code runs) or as safetensors.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from batchmaker.errors import ModelLoadError
from batchmaker.repository.configs import build_model
from batchmaker.repository.folder import load_model, load_weights, save_model
from batchmaker.repository.store import check_model_name

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ImportOptions:
    """What the tensors cannot say."""

    name: str
    family: str
    """``lstm``, ``gru`` or ``seq2seq``."""
    version: int | None = None
    """``None``: one above the highest version in the repository."""
    rnn_prefix: str | None = None
    embedding_prefix: str | None = None
    proj_prefix: str | None = None
    bos: int | None = None
    eos: int | None = None
    max_input_length: int | None = None
    max_output_length: int | None = None
    vocabulary: Sequence[str] = field(default_factory=tuple)
    output_vocabulary: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Stack:
    """One embedding -> RNN -> projection stack found in the tensors, in our layout."""

    kind: str
    hidden_size: int
    num_layers: int
    input_size: int
    vocab_size: int | None
    output_dim: int | None
    tensors: dict[str, torch.Tensor]
    """Keyed as ``RecurrentStackCell`` keys them: ``embedding.weight``, ``rnn.*``, ``proj.*``."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a ``torch.save`` file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(str(path)))
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,  # weights_only refused a pickled object: nothing ran
    ) as exc:
        raise ModelLoadError(f"{path}: cannot read a state_dict ({exc})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return dict(obj)


def find_stack(
    tensors: Tensors,
    *,
    where: str,
    rnn_prefix: str | None = None,
    embedding_prefix: str | None = None,
    proj_prefix: str | None = None,
) -> _Stack:
    """Read one recurrent stack off ``tensors``; ``ModelLoadError`` says what is unclear."""
    auto = rnn_prefix is None
    if rnn_prefix and not rnn_prefix.endswith("."):
        rnn_prefix += "."
    if rnn_prefix is None:
        found = sorted(k[: -len("weight_ih_l0")] for k in tensors if k.endswith("weight_ih_l0"))
        if len(found) != 1:
            raise ModelLoadError(
                f"{where}: found {len(found)} recurrent modules ({found}); name one with "
                "--rnn-prefix"
            )
        rnn_prefix = found[0]
    if f"{rnn_prefix}weight_ih_l0" not in tensors:
        raise ModelLoadError(f"{where}: no {rnn_prefix}weight_ih_l0 tensor")
    if any(k.startswith(rnn_prefix) and k.endswith("_reverse") for k in tensors):
        raise ModelLoadError(f"{where}: bidirectional RNNs cannot stream; export one direction")
    w_ih, w_hh = tensors[f"{rnn_prefix}weight_ih_l0"], tensors[f"{rnn_prefix}weight_hh_l0"]
    hidden, input_size = int(w_hh.shape[1]), int(w_ih.shape[1])
    gates = int(w_ih.shape[0]) // hidden
    kinds = {4: "lstm", 3: "gru"}
    kind_name = kinds.get(gates, "RNN")
    if gates not in kinds or int(w_ih.shape[0]) != gates * hidden:
        raise ModelLoadError(
            f"{where}: {rnn_prefix}weight_ih_l0 has {w_ih.shape[0]} rows for hidden size "
            f"{hidden}: neither an LSTM (4 gates) nor a GRU (3)"
        )
    num_layers = 0
    while f"{rnn_prefix}weight_ih_l{num_layers}" in tensors:
        num_layers += 1
    out: dict[str, torch.Tensor] = {}
    for k in range(num_layers):
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            key = f"{rnn_prefix}{n}_l{k}"
            if key not in tensors:
                raise ModelLoadError(f"{where}: missing {key} (biases are required)")
            out[f"rnn.{n}_l{k}"] = tensors[key]
    used = {rnn_prefix + k.removeprefix("rnn.") for k in out}
    rest = {k: v for k, v in tensors.items() if k not in used}
    embedding = _pick(
        rest,
        embedding_prefix,
        lambda mod: (
            set(mod) == {"weight"}
            and mod["weight"].ndim == 2
            and int(mod["weight"].shape[1]) == input_size
        ),
        where,
        "embedding",
        "--embedding-prefix",
    )
    proj = _pick(
        rest,
        proj_prefix,
        lambda mod: (
            set(mod) == {"weight", "bias"}
            and mod["weight"].ndim == 2
            and int(mod["weight"].shape[1]) == hidden
        ),
        where,
        "output projection",
        "--proj-prefix",
    )
    if auto:
        taken = {id(t) for mod in (embedding, proj) if mod is not None for t in mod.values()}
        unused = sorted(k for k, t in rest.items() if id(t) not in taken)
        if unused:
            raise ModelLoadError(
                f"{where}: tensor {unused[0]!r} fits no part of an embedding -> {kind_name} -> "
                "projection stack (a projection needs a bias; name the parts with "
                "--rnn-prefix/--embedding-prefix/--proj-prefix to import them alone)"
            )
    vocab = None
    if embedding is not None:
        out["embedding.weight"] = embedding["weight"]
        vocab = int(embedding["weight"].shape[0])
    output_dim = None
    if proj is not None:
        out["proj.weight"], out["proj.bias"] = proj["weight"], proj["bias"]
        output_dim = int(proj["weight"].shape[0])
    return _Stack(kinds[gates], hidden, num_layers, input_size, vocab, output_dim, out)


def _modules(tensors: Tensors) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors grouped by module prefix: ``{"emb.": {"weight": ...}}``."""
    mods: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        mods.setdefault(f"{prefix}." if prefix else "", {})[leaf] = t
    return mods


def _pick(
    tensors: Tensors,
    prefix: str | None,
    fits: Any,
    where: str,
    what: str,
    flag: str,
) -> dict[str, torch.Tensor] | None:
    mods = _modules(tensors)
    if prefix is not None:
        mod = mods.get(prefix if prefix.endswith(".") or not prefix else f"{prefix}.")
        if mod is None or not fits(mod):
            raise ModelLoadError(f"{where}: {flag} {prefix!r} does not name a fitting {what}")
        return mod
    found = [p for p, mod in mods.items() if fits(mod)]
    if len(found) > 1:
        raise ModelLoadError(f"{where}: several possible {what}s ({found}); name one with {flag}")
    return mods[found[0]] if found else None


def import_state_dict(weights: str | Path, repository: str | Path, options: ImportOptions) -> Path:
    """Write ``options.name`` as a new version of ``repository``; returns its folder.

    The name is checked first (``check_model_name``): it becomes a folder under the root,
    and ``..``, ``.`` or ``a/b`` would write outside it or onto it."""
    check_model_name(options.name)
    tensors = read_state_dict(weights)
    where = str(weights)
    root = Path(repository)
    version = options.version
    if version is None:
        existing = [
            int(p.name) for p in (root / options.name).glob("*") if p.is_dir() and p.name.isdigit()
        ]
        version = max(existing, default=0) + 1
    if (root / options.name / str(version)).exists():
        raise ModelLoadError(f"{root / options.name / str(version)} already exists")
    config: dict[str, Any]
    ours: dict[str, torch.Tensor]
    if options.family in ("lstm", "gru"):
        stack = find_stack(
            tensors,
            where=where,
            rnn_prefix=options.rnn_prefix,
            embedding_prefix=options.embedding_prefix,
            proj_prefix=options.proj_prefix,
        )
        if stack.kind != options.family:
            raise ModelLoadError(f"{where}: the tensors are a {stack.kind}, not a {options.family}")
        config = {"family": stack.kind, "hidden_size": stack.hidden_size}
        config["num_layers"] = stack.num_layers
        if stack.vocab_size is not None:
            config["vocab_size"] = stack.vocab_size
            config["embedding_dim"] = stack.input_size
        else:
            config["input_dim"] = stack.input_size
        if stack.output_dim is not None:
            config["output_dim"] = stack.output_dim
        if options.max_input_length is not None:
            config["max_input_length"] = options.max_input_length
        if options.vocabulary:
            config["vocabulary"] = list(options.vocabulary)
        if options.output_vocabulary:
            config["output_vocabulary"] = list(options.output_vocabulary)
        ours = {f"step.{k}": v for k, v in stack.tensors.items()}
    elif options.family == "seq2seq":
        config, ours = _seq2seq(tensors, where, options)
    else:
        raise ModelLoadError(f"family {options.family!r} cannot be imported (lstm, gru, seq2seq)")
    model = build_model(options.name, version, config, where)
    load_weights(model, ours, where)
    folder = save_model(model, root)
    load_model(folder, options.name, version)  # what was written serves
    return folder


def _seq2seq(
    tensors: Tensors, where: str, options: ImportOptions
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if options.bos is None or options.eos is None:
        raise ModelLoadError("seq2seq: give the decoder's --bos and --eos token ids")
    parts = {}
    for side in ("encoder", "decoder"):
        sub = {k[len(side) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{side}.")}
        if not sub:
            raise ModelLoadError(
                f"{where}: no {side}.* tensors (an encoder-decoder keys its "
                "two stacks encoder.* and decoder.*)"
            )
        parts[side] = find_stack(sub, where=f"{where} ({side})")
    enc, dec = parts["encoder"], parts["decoder"]
    if enc.vocab_size is None or dec.vocab_size is None or dec.output_dim is None:
        raise ModelLoadError(
            f"{where}: a seq2seq model needs embeddings on both sides and a decoder projection"
        )
    if (enc.kind, enc.hidden_size, enc.num_layers) != (dec.kind, dec.hidden_size, dec.num_layers):
        raise ModelLoadError(
            f"{where}: encoder ({enc.kind} {enc.num_layers}x{enc.hidden_size}) and decoder "
            f"({dec.kind} {dec.num_layers}x{dec.hidden_size}) must match: the decoder starts "
            "from the encoder's state"
        )
    config: dict[str, Any] = {
        "family": "seq2seq",
        "cell": enc.kind,
        "hidden_size": enc.hidden_size,
        "num_layers": enc.num_layers,
        "source_vocab_size": enc.vocab_size,
        "target_vocab_size": dec.vocab_size,
        "source_embedding_dim": enc.input_size,
        "target_embedding_dim": dec.input_size,
        "bos": options.bos,
        "eos": options.eos,
    }
    if options.max_input_length is not None:
        config["max_input_length"] = options.max_input_length
    if options.max_output_length is not None:
        config["max_output_length"] = options.max_output_length
    if options.vocabulary:
        config["source_vocabulary"] = list(options.vocabulary)
    if options.output_vocabulary:
        config["target_vocabulary"] = list(options.output_vocabulary)
    ours = {f"encoder.{k}": v for k, v in enc.tensors.items()}
    ours.update({f"decoder.{k}": v for k, v in dec.tensors.items()})
    return config, ours
