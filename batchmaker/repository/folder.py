"""One version folder: ``config.json`` and ``model.safetensors`` <-> a ``Model``.

Weights are safetensors keyed ``<cell>.<parameter>`` (no pickle). Their shapes are
checked against the file's header on the meta device before any weight is
allocated, so a config too big to build, or a missing, extra or misshapen tensor,
is a clear ``ModelLoadError`` rather than an allocation or a half-loaded model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from batchmaker.errors import ModelLoadError
from batchmaker.models.base import Model
from batchmaker.repository.configs import build_model, model_config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


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
