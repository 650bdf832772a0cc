"""Plain torch for the benchmarks' reference check (``reference.check_reference``).

What the idle run's outputs are checked against must not share the engine's cell code,
or a bug in that code would pass its own check. Chains and seq2seq already qualify: their
``Model.reference`` runs the model's ``nn.LSTM``/``nn.GRU`` modules over the whole
sequence in one call, while the engine steps the cell (``torch.lstm_cell``, the CPU's step
loop, or a packed batch). ``TreeModel.reference`` does not: it calls the
``BinaryTreeLSTMCell`` itself, node by node. So trees get ``tree_reference``: the N-ary
TreeLSTM equations written here from the cell's raw parameters, with no call into the
cell or its submodules.
"""

from __future__ import annotations

import numpy as np
import torch

from batchmaker.models.base import Model
from batchmaker.models.tree import TreeModel
from batchmaker.types import InferRequest, TreeInput


def plain_torch(model: Model, request: InferRequest) -> np.ndarray:
    """The request's full output rows ``[steps, dim]`` from code independent of the cell's
    forward: ``tree_reference`` for trees, the model's own ``reference`` otherwise."""
    if isinstance(model, TreeModel):
        return tree_reference(model, request)
    return model.reference(request)


def tree_reference(model: TreeModel, request: InferRequest) -> np.ndarray:
    """``[1, num_classes]``: the root's scores, node by node from the root down.

    From the cell's parameters (``embedding.weight``, ``W``, ``U``, ``classifier``): for
    a node with token ``x`` and children ``(h_l, c_l)``, ``(h_r, c_r)`` (zeros where
    absent), ``i, f_l, f_r, o, u = W e(x) + b + U [h_l; h_r]``,
    ``c = s(i) t(u) + s(f_l) c_l + s(f_r) c_r``, ``h = s(o) t(c)``, and the scores
    ``classifier(h)`` of the root (Tai, Socher and Manning, ACL 2015).
    """
    tree = request.inputs
    if not isinstance(tree, TreeInput):
        raise TypeError(f"a tree request's inputs are a TreeInput, got {type(tree).__name__}")
    cell = model.cell
    hidden = cell.hidden_size
    with torch.no_grad():
        emb = cell.embedding.weight.detach().float()
        w, b = cell.W.weight.detach().float(), cell.W.bias.detach().float()
        u = cell.U.weight.detach().float()
        cw, cb = cell.classifier.weight.detach().float(), cell.classifier.bias.detach().float()
        zero = torch.zeros(hidden)
        children = [[int(k) for k in ch] for ch in tree.children]
        if any(len(ch) > 2 for ch in children):
            raise ValueError("a binary TreeLSTM node has at most two children")

        def node(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            kids = [node(k) for k in children[i]]
            kids += [(zero, zero)] * (2 - len(kids))
            (h_l, c_l), (h_r, c_r) = kids
            z = w @ emb[int(tree.tokens[i])] + b + u @ torch.cat([h_l, h_r])
            i_g, f_l, f_r, o_g, u_g = (z[k * hidden : (k + 1) * hidden] for k in range(5))
            c = (
                torch.sigmoid(i_g) * torch.tanh(u_g)
                + torch.sigmoid(f_l) * c_l
                + torch.sigmoid(f_r) * c_r
            )
            return torch.sigmoid(o_g) * torch.tanh(c), c

        named = {k for ch in children for k in ch}
        (root,) = [i for i in range(len(children)) if i not in named]
        h, _ = node(root)
        scores = cw @ h + cb
    out: np.ndarray = scores.unsqueeze(0).numpy()
    return out
