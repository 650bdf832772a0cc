"""The demo models that ship inside the package, and how they were made.

Three small models, really trained on synthetic tasks, so a server answers
meaningfully out of the box (``make serve``) and the tests can check that
batching never changes a single answer of a model that means something:

- ``words-to-digits`` (seq2seq): "three hundred forty two" -> ``3 4 2 </s>``;
- ``arith-mod10`` (TreeLSTM): ``(+ 3 (* 4 5))`` -> its value mod 10;
- ``counting-lm`` (LSTM language model): "twenty one , twenty two , ..." -> the next word.

This package owns the synthetic tasks (``tasks``: data, vocabularies, held-out
splits, the s-expression tree syntax; torch-free, so a client may use it), the
training script (``train``, ``python -m batchmaker.demos.train``) and the trained
repository (``repository/``, the usual ``<model>/<version>/`` layout plus
``ACCURACY.json``). It must not be imported by the engine: serving these models
goes through ``batchmaker.repository.store`` like any other model folder.
"""

from __future__ import annotations

from pathlib import Path

DEMO_REPOSITORY = Path(__file__).resolve().parent / "repository"
"""The trained demo models, a model repository ``ModelRepository`` reads."""

DEMO_MODEL_NAMES: tuple[str, ...] = ("words-to-digits", "arith-mod10", "counting-lm")
"""The demo models' names, in the order ``train`` trains them."""

__all__ = ["DEMO_MODEL_NAMES", "DEMO_REPOSITORY"]
