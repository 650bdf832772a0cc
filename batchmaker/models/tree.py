"""TreeLSTM models: a tree in, one streamed step (the root's scores) out."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from batchmaker.errors import InvalidRequestError
from batchmaker.models.base import Model
from batchmaker.models.checks import as_array, check_token_ids, check_vocabulary, child_lists
from batchmaker.types import (
    MAX_TREE_NODES,
    InferRequest,
    ModelSignature,
    TensorSignature,
    TreeInput,
)
from cells import BinaryTreeLSTMCell, Cell
from scheduler import RequestGraph, TreeGraph, check_tree


class TreeModel(Model):
    """A binary TreeLSTM classifier: a tree in, one streamed step (the root's scores) out."""

    def __init__(
        self,
        name: str,
        cell: BinaryTreeLSTMCell,
        *,
        version: int = 1,
        max_nodes: int = 256,
        max_depth: int = 64,
        vocabulary: Sequence[str] = (),
        classes: Sequence[str] = (),
    ) -> None:
        super().__init__(name, version)
        if not 1 <= max_nodes <= MAX_TREE_NODES or max_depth < 1:
            raise ValueError(
                f"model {name!r}: max_nodes must be in [1, {MAX_TREE_NODES}] and max_depth "
                f">= 1, got {max_nodes}, {max_depth}"
            )
        check_vocabulary(name, "vocabulary", vocabulary, cell.input_dim)
        check_vocabulary(name, "classes", classes, cell.output_dim)
        self.cell = cell.eval().requires_grad_(False)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.vocabulary = tuple(vocabulary)
        self.classes = tuple(classes)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"node": self.cell}

    @functools.cached_property
    def signature(self) -> ModelSignature:
        # Cached: read on every request's validation, and a model's shape never changes.
        c = self.cell
        return ModelSignature(
            family="treelstm",
            inputs=(
                TensorSignature("tree.tokens", "INT64", (-1,)),
                TensorSignature("tree.children", "INT32", (-1, c.arity)),
            ),
            outputs=(TensorSignature("scores", "FP32", (c.output_dim,)),),
            max_input_length=self.max_nodes,
            max_output_length=1,
            max_top_k=c.output_dim,
            vocab_size=c.input_dim,
            input_vocabulary=self.vocabulary,
            output_vocabulary=self.classes,
            max_tree_depth=self.max_depth,
        )

    def validate(self, request: InferRequest) -> None:
        tree = request.inputs
        if not isinstance(tree, TreeInput):
            raise InvalidRequestError(f"tree: model {self.name!r} takes a tree, not a sequence")
        tokens = as_array(tree.tokens, "tree.tokens")
        if tokens.ndim != 1:
            raise InvalidRequestError(
                f"tree.tokens: expected one token id per node, got shape {list(tokens.shape)}"
            )
        if len(tokens) > self.max_nodes:  # before any per-node Python work
            raise InvalidRequestError(
                f"tree: {len(tokens)} nodes, model {self.name!r} allows at most {self.max_nodes}"
            )
        children = child_lists(tree.children)
        if len(children) != len(tokens):
            raise InvalidRequestError(f"tree: {len(tokens)} tokens but {len(children)} child lists")
        if len(tokens) == 0:
            raise InvalidRequestError("tree: the tree has no nodes")
        check_token_ids(
            tokens,
            model=self.name,
            vocab_size=self.cell.input_dim,
            max_len=self.max_nodes,
            field="tree.tokens",
        )
        problem = check_tree(
            children, arity=self.cell.arity, max_nodes=self.max_nodes, max_depth=self.max_depth
        )
        if problem is not None:
            raise InvalidRequestError(f"tree: {problem}")
        self._validate_options(request)

    def warmup_request(self) -> InferRequest:
        tree = TreeInput(tokens=[0, 0, 0], children=[[1, 2], [], []])
        return InferRequest(model=self.name, inputs=tree, version=self.version, top_k=1)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        tree = request.inputs
        assert isinstance(tree, TreeInput)
        return TreeGraph(
            self.qualify("node"),
            np.asarray(tree.tokens, dtype=np.int64),
            tree.children,
            self.qualify("state"),
            arity=self.cell.arity,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        """Plain torch, one node at a time by recursion from the root: ``[1, classes]``."""
        tree = request.inputs
        assert isinstance(tree, TreeInput)
        c = self.cell
        zero = torch.zeros(1, c.hidden_size)

        def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            kids = [run(int(k)) for k in tree.children[i]]
            kids += [(zero, zero)] * (c.arity - len(kids))
            h = torch.stack([k[0] for k in kids], dim=1)
            cc = torch.stack([k[1] for k in kids], dim=1)
            _, (h_new, c_new) = c(torch.tensor([int(tree.tokens[i])]), (h, cc))
            return h_new, c_new

        children = {int(k) for ch in tree.children for k in ch}
        root = next(i for i in range(len(tree.tokens)) if i not in children)
        with torch.inference_mode():
            h, _ = run(root)
            out: np.ndarray = c.classifier(h).numpy()
        return out


def tree_model(
    name: str,
    *,
    vocab_size: int = 16,
    hidden_size: int = 64,
    num_classes: int = 10,
    seed: int = 0,
    version: int = 1,
    max_nodes: int = 256,
    max_depth: int = 64,
) -> TreeModel:
    """A binary TreeLSTM with reproducible random weights (tests, benchmarks)."""
    torch.manual_seed(seed)
    cell = BinaryTreeLSTMCell(
        vocab_size=vocab_size, hidden_size=hidden_size, num_classes=num_classes
    )
    return TreeModel(name, cell, version=version, max_nodes=max_nodes, max_depth=max_depth)
