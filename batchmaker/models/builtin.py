"""The models a server can serve by name without a model repository.

Reproducible random weights (fixed seeds): they exercise every code path and
match plain torch exactly, but their predictions mean nothing. They exist for
the benchmarks (``lstm-512``), the in-process ``batchmaker demo`` and tests; the
trained models a server serves by default are the demo repository's
(``batchmaker.demos``). The names are known without importing torch (the CLI
lists them); building a model imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchmaker.models.sequence import SequenceModel


def _lstm_lm() -> SequenceModel:
    from batchmaker.models.sequence import recurrent_model

    return recurrent_model(
        "lstm-lm", "lstm", vocab_size=1000, hidden_size=256, num_layers=2, seed=1
    )


def _gru_lm() -> SequenceModel:
    from batchmaker.models.sequence import recurrent_model

    return recurrent_model("gru-lm", "gru", vocab_size=1000, hidden_size=256, num_layers=2, seed=2)


def benchmark_model() -> SequenceModel:
    """The engine benchmark's model: a PTB-sized LSTM LM (2 x 512, 10k vocabulary)."""
    from batchmaker.models.sequence import recurrent_model

    return recurrent_model(
        "lstm-512",
        "lstm",
        vocab_size=10_000,
        hidden_size=512,
        num_layers=2,
        seed=3,
        max_input_len=512,
    )


def idle_latency_model() -> SequenceModel:
    """One LSTM layer of 512 over a 1000-token vocabulary: the idle-latency benchmark's
    model, where one request's steps cost about as much as the fused kernel needs."""
    from batchmaker.models.sequence import recurrent_model

    return recurrent_model(
        "lstm-1x512", "lstm", vocab_size=1000, hidden_size=512, num_layers=1, seed=4
    )


def host_cost_model() -> SequenceModel:
    """An LSTM so small (hidden 8, vocabulary 32) that its compute is almost nothing: what
    a step costs with it is the engine's own cost per step and per row, which a GPU would
    wait on."""
    from batchmaker.models.sequence import recurrent_model

    return recurrent_model("lstm-tiny", "lstm", vocab_size=32, hidden_size=8, num_layers=1, seed=5)


BUILTIN_MODELS: dict[str, Callable[[], SequenceModel]] = {
    "lstm-lm": _lstm_lm,
    "gru-lm": _gru_lm,
    "lstm-512": benchmark_model,
    "lstm-1x512": idle_latency_model,
    "lstm-tiny": host_cost_model,
}
"""Name -> factory. Building is deterministic: the same name gives the same weights."""

DEFAULT_MODEL_NAMES: tuple[str, ...] = ("lstm-lm", "gru-lm")
"""What the in-process ``batchmaker demo`` streams through."""


def default_models() -> list[SequenceModel]:
    return builtin_models(DEFAULT_MODEL_NAMES)


def check_model_names(names: Sequence[str]) -> None:
    """A ``ValueError`` listing the known names, for an unknown one or none at all."""
    unknown = [n for n in names if n not in BUILTIN_MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown[0]!r}; built in: {', '.join(BUILTIN_MODELS)}")
    if not names:
        raise ValueError("models: name at least one")


def builtin_models(names: Sequence[str]) -> list[SequenceModel]:
    """Build the named models (each once, in order)."""
    check_model_names(names)
    return [BUILTIN_MODELS[n]() for n in dict.fromkeys(names)]
