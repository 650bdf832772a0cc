"""The models an engine serves when none are configured.

Reproducible random weights (fixed seeds) until trained demo models ship
with the model-repository issue; they exercise every code path and match
plain torch exactly, but their predictions mean nothing.
"""

from __future__ import annotations

from batchmaker.models import SequenceModel, recurrent_model


def default_models() -> list[SequenceModel]:
    return [
        recurrent_model("lstm-lm", "lstm", vocab_size=1000, hidden_size=256, num_layers=2, seed=1),
        recurrent_model("gru-lm", "gru", vocab_size=1000, hidden_size=256, num_layers=2, seed=2),
    ]


def benchmark_model() -> SequenceModel:
    """The engine benchmark's model: a PTB-sized LSTM LM (2 x 512, 10k vocabulary)."""
    return recurrent_model(
        "lstm-512",
        "lstm",
        vocab_size=10_000,
        hidden_size=512,
        num_layers=2,
        seed=3,
        max_input_len=512,
    )
