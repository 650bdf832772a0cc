"""Train the demo models and write them into a model repository.

    python -m batchmaker.demos.train                      # all three, into the package
    python -m batchmaker.demos.train --model arith-mod10 --out /tmp/repo

Training runs on the very modules the served cells hold (``nn.Embedding``,
``nn.LSTM``, ``nn.Linear``; the TreeLSTM cell's own ``forward``), batched the way
training likes (whole padded sequences, trees level by level), so what is saved
and served is exactly what was trained. Every run is reproducible: fixed seeds,
a fixed number of steps, deterministic algorithms and a fixed thread count (CPU
float sums depend on how the work is split across threads, so the thread count
is part of the recipe and is recorded with the results).

Held-out accuracy is measured here on examples the training split can never
contain (``tasks.split_of``) and written to ``ACCURACY.json`` beside the models.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from batchmaker.demos import DEMO_MODEL_NAMES, DEMO_REPOSITORY, tasks
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from batchmaker.repository.folder import save_model
from cells import BinaryTreeLSTMCell, EncoderCell, GreedyDecoderCell, RecurrentStackCell

ACCURACY_FILE = "ACCURACY.json"

TRAIN_SEED = 0
"""Seeds the weights and the training sample; the evaluation sample uses its own seed."""
EVAL_SEED = 1_000_003


@dataclass
class Trained:
    """A trained model and what its held-out evaluation found."""

    model: Model
    report: dict[str, Any]
    """JSON-ready: accuracy, sample sizes, seeds, hyperparameters, seconds."""


def _seed(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _served(*cells: nn.Module) -> None:
    """Ready trained cells for serving in this process: eval mode, and the recurrent cells'
    packed step weights (copies made at construction) rebuilt from the trained parameters
    by their load hook. Saving needs neither; a model built here and served at once does."""
    for cell in cells:
        cell.eval()
        cell.load_state_dict(cell.state_dict())


def _pad(rows: Sequence[Sequence[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, B]`` time-major padded ids and the ``[B]`` lengths."""
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.full((int(lengths.max()), len(rows)), value, dtype=torch.int64)
    for j, r in enumerate(rows):
        out[: len(r), j] = torch.tensor(r)
    return out, lengths


def _fit(
    params: Sequence[nn.Parameter],
    loss_of_step: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    log_every: int,
    name: str,
) -> None:
    """Adam with a cosine decay to 5% of ``lr``, gradient clipping, and a progress line."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0)))
    )
    t0 = time.monotonic()
    running = 0.0
    for step in range(1, steps + 1):
        loss = loss_of_step(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0:
            print(
                f"  {name} step {step:5d}/{steps}  loss {running / log_every:.4f}  "
                f"{time.monotonic() - t0:6.1f}s",
                flush=True,
            )
            running = 0.0


# ---- words-to-digits ------------------------------------------------------------------------


def _seq2seq_batch(numbers: Sequence[int]) -> tuple[torch.Tensor, ...]:
    src, src_len = _pad(
        [tasks.encode(tasks.number_to_words(n), tasks.WORDS_VOCABULARY) for n in numbers]
    )
    targets = [tasks.digits_target(n) for n in numbers]
    dec_in, _ = _pad([[tasks.BOS, *t[:-1]] for t in targets], tasks.PAD)
    dec_out, _ = _pad(targets, tasks.PAD)
    return src, src_len, dec_in, dec_out


def _modules(cell: RecurrentStackCell) -> tuple[nn.Embedding, nn.Linear]:
    """The embedding and projection of a token-in, scores-out stack (both exist here)."""
    assert cell.embedding is not None
    assert cell.proj is not None
    return cell.embedding, cell.proj


def _encode(enc: EncoderCell, src: torch.Tensor, lengths: torch.Tensor) -> Any:
    """The encoder's last state of each (padded) source, as the decoder's first state."""
    assert enc.embedding is not None
    packed = pack_padded_sequence(enc.embedding(src), lengths, enforce_sorted=False)
    _, state = enc.rnn(packed)
    return state


def _greedy(
    enc: EncoderCell, dec: GreedyDecoderCell, numbers: Sequence[int], max_len: int
) -> list[list[int]]:
    """Batched greedy decoding, as the server does it: from BOS until EOS (kept) or ``max_len``."""
    embedding, proj = _modules(dec)
    src, src_len, _, _ = _seq2seq_batch(numbers)
    with torch.inference_mode():
        state = _encode(enc, src, src_len)
        token = torch.full((len(numbers),), tasks.BOS)
        steps = []
        for _ in range(max_len):
            y, state = dec.rnn(embedding(token).unsqueeze(0), state)
            token = proj(y[0]).argmax(dim=1)
            steps.append(token)
        out = torch.stack(steps, dim=1).tolist()
    return [row[: row.index(tasks.EOS) + 1] if tasks.EOS in row else row for row in out]


def train_words_to_digits(*, steps: int = 2500, hidden: int = 128, batch: int = 128) -> Trained:
    rng = _seed(TRAIN_SEED)
    enc = EncoderCell(
        "lstm", hidden_size=hidden, vocab_size=len(tasks.WORDS_VOCABULARY), embedding_dim=64
    )
    dec = GreedyDecoderCell(
        "lstm",
        hidden_size=hidden,
        vocab_size=len(tasks.DIGITS_VOCABULARY),
        embedding_dim=32,
        output_dim=len(tasks.DIGITS_VOCABULARY),
    )
    embedding, proj = _modules(dec)
    loss_fn = nn.CrossEntropyLoss(ignore_index=tasks.PAD)

    def loss_of_step(step: int) -> torch.Tensor:
        src, src_len, dec_in, dec_out = _seq2seq_batch(tasks.sample_numbers(rng, batch, "train"))
        state = _encode(enc, src, src_len)
        y, _ = dec.rnn(embedding(dec_in), state)
        logits = proj(y)
        loss: torch.Tensor = loss_fn(logits.flatten(0, 1), dec_out.flatten())
        return loss

    params = [*enc.parameters(), *dec.parameters()]
    t0 = time.monotonic()
    _fit(params, loss_of_step, steps=steps, lr=3e-3, log_every=250, name="words-to-digits")
    seconds = time.monotonic() - t0
    _served(enc, dec)
    max_decode = len(str(tasks.MAX_NUMBER)) + 1
    test = tasks.sample_numbers(np.random.default_rng(EVAL_SEED), 4000, "test")
    got = _greedy(enc, dec, test, max_decode)
    right = [g == tasks.digits_target(n) for g, n in zip(got, test, strict=True)]
    by_digits: dict[str, list[bool]] = {}
    for n, ok in zip(test, right, strict=True):
        by_digits.setdefault(str(len(str(n))), []).append(ok)
    model = Seq2SeqModel(
        "words-to-digits",
        enc,
        dec,
        bos=tasks.BOS,
        eos=tasks.EOS,
        max_input_len=tasks.MAX_NUMBER_WORDS,
        max_decode_len=max_decode,
        source_vocabulary=tasks.WORDS_VOCABULARY,
        target_vocabulary=tasks.DIGITS_VOCABULARY,
    )
    return Trained(
        model,
        {
            "metric": "exact match of the decoded digits and </s> (greedy, held-out numbers)",
            "accuracy": float(np.mean(right)),
            "num_test": len(test),
            "accuracy_by_num_digits": {k: float(np.mean(v)) for k, v in sorted(by_digits.items())},
            "train_steps": steps,
            "batch": batch,
            "hidden_size": hidden,
            "train_seconds": round(seconds, 1),
        },
    )


# ---- arith-mod10 -----------------------------------------------------------------------------


@dataclass
class _TreeBatch:
    tokens: torch.Tensor
    """``[N]`` node tokens, children before parents."""
    kids: torch.Tensor
    """``[N, 2]`` child rows; row ``N`` (past the last node) is an absent child's zero state."""
    labels: torch.Tensor
    """``[N]`` each node's subtree value mod 10."""
    levels: list[torch.Tensor]
    """Node rows by height: leaves first, then every node whose children are all done."""
    roots: torch.Tensor


def _tree_batch(exprs: Sequence[tasks.Expr]) -> _TreeBatch:
    vocab = {w: i for i, w in enumerate(tasks.ARITH_VOCABULARY)}
    tokens: list[int] = []
    kids: list[tuple[int, int]] = []
    labels: list[int] = []
    heights: list[int] = []
    roots: list[int] = []

    def visit(e: tasks.Expr) -> tuple[int, int, int]:
        """Post-order: returns (row, value, height)."""
        if e.left is None or e.right is None:
            row, value, height, pair = len(tokens), int(e.token), 0, (-1, -1)
        else:
            lrow, lval, lh = visit(e.left)
            rrow, rval, rh = visit(e.right)
            value = (
                lval + rval if e.token == "+" else lval - rval if e.token == "-" else lval * rval
            )
            row, height, pair = len(tokens), 1 + max(lh, rh), (lrow, rrow)
        tokens.append(vocab[e.token])
        kids.append(pair)
        labels.append(value % 10)
        heights.append(height)
        return row, value, height

    for e in exprs:
        roots.append(visit(e)[0])
    n = len(tokens)
    kid_rows = torch.tensor([[n if k < 0 else k for k in pair] for pair in kids])
    h = np.asarray(heights)
    return _TreeBatch(
        torch.tensor(tokens),
        kid_rows,
        torch.tensor(labels),
        [torch.from_numpy(np.flatnonzero(h == d)) for d in range(int(h.max()) + 1)],
        torch.tensor(roots),
    )


def _tree_logits(cell: BinaryTreeLSTMCell, b: _TreeBatch) -> torch.Tensor:
    """Every node's class scores, ``[N, classes]``: the served cell, one level at a time."""
    n, hid = len(b.tokens), cell.hidden_size
    h = torch.zeros(n + 1, hid)
    c = torch.zeros(n + 1, hid)
    logits = torch.zeros(n, cell.output_dim)
    for rows in b.levels:
        kids = b.kids[rows]
        out, (h_new, c_new) = cell(b.tokens[rows], (h[kids], c[kids]))
        h = h.index_copy(0, rows, h_new)
        c = c.index_copy(0, rows, c_new)
        logits = logits.index_copy(0, rows, out)
    return logits


TRAIN_DEPTHS = (1, 2, 3, 4)
EVAL_DEPTHS = (1, 2, 3, 4, 5, 6)


def train_arith_mod10(*, steps: int = 3000, hidden: int = 96, batch: int = 64) -> Trained:
    rng = _seed(TRAIN_SEED)
    cell = BinaryTreeLSTMCell(
        vocab_size=len(tasks.ARITH_VOCABULARY),
        hidden_size=hidden,
        num_classes=len(tasks.ARITH_CLASSES),
        embedding_dim=32,
    )
    loss_fn = nn.CrossEntropyLoss()

    def loss_of_step(step: int) -> torch.Tensor:
        depths = rng.choice(TRAIN_DEPTHS, size=batch)
        exprs = [e for d in depths for e in tasks.sample_exprs(rng, 1, int(d), "train")]
        b = _tree_batch(exprs)
        logits = _tree_logits(cell, b)
        # Every subtree's value mod 10 is known: supervising each node, not only the root,
        # teaches the table of each operator directly.
        loss: torch.Tensor = loss_fn(logits, b.labels) + loss_fn(logits[b.roots], b.labels[b.roots])
        return loss

    t0 = time.monotonic()
    _fit(
        list(cell.parameters()),
        loss_of_step,
        steps=steps,
        lr=3e-3,
        log_every=250,
        name="arith-mod10",
    )
    seconds = time.monotonic() - t0
    _served(cell)
    eval_rng = np.random.default_rng(EVAL_SEED)
    by_depth: dict[str, float] = {}
    sizes: dict[str, int] = {}
    trained_right = trained_total = 0
    with torch.inference_mode():
        for d in EVAL_DEPTHS:
            test = tasks.sample_exprs(eval_rng, 1000, d, "test", distinct=True)
            b = _tree_batch(test)
            pred = _tree_logits(cell, b)[b.roots].argmax(dim=1)
            right = int((pred == b.labels[b.roots]).sum())
            by_depth[str(d)], sizes[str(d)] = right / len(test), len(test)
            if d in TRAIN_DEPTHS:
                trained_right, trained_total = trained_right + right, trained_total + len(test)
    model = TreeModel(
        "arith-mod10",
        cell,
        max_nodes=255,
        max_depth=16,
        vocabulary=tasks.ARITH_VOCABULARY,
        classes=tasks.ARITH_CLASSES,
    )
    return Trained(
        model,
        {
            "metric": "root class = value mod 10 (held-out trees, distinct, by operator depth)",
            "accuracy": trained_right / trained_total,
            "num_test": trained_total,
            "accuracy_by_depth": by_depth,
            "num_test_by_depth": sizes,
            "train_depths": list(TRAIN_DEPTHS),
            "train_steps": steps,
            "batch": batch,
            "hidden_size": hidden,
            "train_seconds": round(seconds, 1),
        },
    )


# ---- counting-lm -------------------------------------------------------------------------------


def train_counting_lm(*, steps: int = 5500, hidden: int = 192, batch: int = 32) -> Trained:
    rng = _seed(TRAIN_SEED)
    vocab = tasks.COUNTING_VOCABULARY
    cell = RecurrentStackCell(
        "lstm", hidden_size=hidden, vocab_size=len(vocab), embedding_dim=32, output_dim=len(vocab)
    )
    embedding, proj = _modules(cell)
    pad = -100  # the loss's ignore index; inputs pad with any id (masked out by the targets)
    loss_fn = nn.CrossEntropyLoss(ignore_index=pad)

    def scores(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = _pad([r[:-1] for r in rows])
        y, _ = cell.rnn(embedding(x))
        return proj(y), lengths

    def loss_of_step(step: int) -> torch.Tensor:
        rows = [tasks.encode(s, vocab) for s in tasks.sample_counting(rng, batch, "train")]
        logits, _ = scores(rows)
        target, _ = _pad([r[1:] for r in rows], pad)
        loss: torch.Tensor = loss_fn(logits.flatten(0, 1), target.flatten())
        return loss

    t0 = time.monotonic()
    _fit(
        list(cell.parameters()),
        loss_of_step,
        steps=steps,
        lr=3e-3,
        log_every=250,
        name="counting-lm",
    )
    seconds = time.monotonic() - t0
    _served(cell)
    test = tasks.sample_counting(np.random.default_rng(EVAL_SEED), 1000, "test")
    rows = [tasks.encode(s, vocab) for s in test]
    with torch.inference_mode():
        pred = scores(rows)[0].argmax(dim=2).T.tolist()  # [B, T-1]: pred[j][i] guesses rows[j][i+1]
    num_right = num_total = seq_right = 0
    for s, r, p in zip(test, rows, pred, strict=True):
        first = tasks.predictable_from(s)
        ok = [int(p[i - 1]) == r[i] for i in range(first, len(r))]
        num_right += sum(ok)
        num_total += len(ok)
        seq_right += all(ok)
    model = SequenceModel(
        "counting-lm",
        cell,
        max_input_len=256,
        vocabulary=vocab,
        output_vocabulary=vocab,
    )
    return Trained(
        model,
        {
            "metric": "top-1 next word after the first number (held-out sequences)",
            "accuracy": num_right / num_total,
            "num_test": num_total,
            "num_test_sequences": len(test),
            "sequence_accuracy": seq_right / len(test),
            "train_steps": steps,
            "batch": batch,
            "hidden_size": hidden,
            "train_seconds": round(seconds, 1),
        },
    )


TRAINERS: dict[str, Callable[[], Trained]] = {
    "words-to-digits": train_words_to_digits,
    "arith-mod10": train_arith_mod10,
    "counting-lm": train_counting_lm,
}
assert tuple(TRAINERS) == DEMO_MODEL_NAMES


EXAMPLES = {
    "words-to-digits": '--text "seven thousand three hundred forty two"',
    "arith-mod10": '--tree "(+ 3 (* 4 2))"',
    "counting-lm": '--text "twenty one , twenty two , twenty" --top-k 2',
}
"""Each model's example input as ``batchmaker infer`` flags: the server's banner shows it."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchmaker.demos.train",
        description="Train the demo models, save them, and record their held-out accuracy.",
    )
    parser.add_argument(
        "--model", action="append", choices=DEMO_MODEL_NAMES, help="repeatable; default: all"
    )
    parser.add_argument("--out", type=Path, default=DEMO_REPOSITORY, help="model repository")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (part of the recipe; default 1)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / ACCURACY_FILE
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name in dict.fromkeys(args.model or DEMO_MODEL_NAMES):
        print(f"training {name}", flush=True)
        trained = TRAINERS[name]()
        trained.model.example = EXAMPLES[name]
        folder = save_model(trained.model, args.out)
        report = {
            **trained.report,
            "train_seed": TRAIN_SEED,
            "eval_seed": EVAL_SEED,
            "test_fraction": tasks.TEST_FRACTION,
            "torch_threads": args.threads,
            "torch_version": torch.__version__,
        }
        summary[name] = report
        print(
            f"{name}: held-out accuracy {report['accuracy']:.4f} on {report['num_test']} "
            f"in {report['train_seconds']:.1f}s of training -> {folder}",
            flush=True,
        )
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
