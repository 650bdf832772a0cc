"""One request as a JSON object, one answer as a JSON line: the records of ``batchmaker
transform``'s files and of the SageMaker door's bodies (``/invocations``).

A record holds the fields of ``batchmaker.v1``'s request, flat, plus text for models with
a vocabulary::

    {"id": "a1", "tokens": [1, 2, 3], "top_k": 2}
    {"text": "twenty one , twenty two", "max_output_length": 4}
    {"tree": "(+ 3 (* 4 2))"}
    {"tree": [[1, [1, 2]], [4, []], [2, []]], "model": "arith-mod10"}
    {"vectors": [[0.5, 0.1], [0.2, 0.3]], "return_vectors": true}

Exactly one of ``tokens``, ``vectors``, ``tree`` (an s-expression of the model's
vocabulary, or ``[token, [children]]`` per node) and ``text`` (whitespace-separated tokens
of the vocabulary); optional ``id`` (a string or an integer, echoed), ``model`` and
``version`` (default: the job's or the endpoint's model), ``top_k`` (default 1),
``max_output_length``, ``return_vectors``, ``priority``. A line of a plain text file is
the record ``{"text": line}``. Any other field is an error naming it.

The record becomes an engine request through ``batchmaker.v1``'s own conversion
(``request_to_pb`` then ``request_from_pb``), so it is checked exactly as a gRPC request
is, with the same messages; the model then checks it against itself (vocabulary, lengths).

An answer is one line: ``line`` (its 1-based line in its file or body, for files and JSON
Lines bodies), ``id`` when the record had one, then either the outputs (``model``,
``version``, ``finish_reason``, ``steps``, ``top_ids`` and ``top_scores`` as one row per
step, ``vectors`` when asked, and ``text``, the best id of each step as the model's output
vocabulary spells it, when it has one) or ``error``, ``{"code", "message"}``.

Pure Python and numpy: no torch, no asyncio, no server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from batchmaker.errors import BatchMakerError, InvalidRequestError
from batchmaker.types import (
    MAX_TREE_NODES,
    FinishReason,
    InferRequest,
    StepBlock,
    StepOutput,
    TreeInput,
)
from batchmaker.wire.kserve_http import _kind, parse_json  # the same words for JSON kinds
from batchmaker.wire.text import detokenize, encode, parse_sexpr
from batchmaker.wire.v1 import MAX_REQUEST_ID_LEN, request_from_pb, request_to_pb

Format = Literal["jsonl", "text"]
"""How a line is read: a JSON object, or a sequence of the model's vocabulary."""

INPUT_FIELDS = ("tokens", "vectors", "tree", "text")
"""A record's input: exactly one of these."""
OPTION_FIELDS = ("top_k", "max_output_length", "return_vectors", "priority")
FIELDS = frozenset({"id", "model", "version", *INPUT_FIELDS, *OPTION_FIELDS})

RecordId = str | int
"""A record's own id, as it was given (JSON string or integer)."""


@dataclass(frozen=True, slots=True)
class RecordKey:
    """Where an answer belongs: its record's line and id (what ``--resume`` compares)."""

    line: int | None
    """1-based line in its file or body; ``None`` for a lone JSON request."""
    id: RecordId | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One record, read and checked as far as its own fields show."""

    key: RecordKey
    model: str
    version: str
    """``""``: the latest version."""
    inputs: np.ndarray | TreeInput
    top_k: int | None
    """``None``: the default (1)."""
    max_output_length: int
    """0: the model's own limit."""
    return_vectors: bool
    priority: int

    def options(self) -> dict[str, Any]:
        """The client's request options (``batchmaker.client.RequestOptions``)."""
        return {
            "version": self.version or None,
            "priority": self.priority,
            "top_k": self.top_k,
            "return_vectors": self.return_vectors,
            "max_output_length": self.max_output_length,
        }

    def request(self) -> InferRequest:
        """The engine's request, through ``batchmaker.v1``'s conversion and its checks."""
        msg = request_to_pb(self.model, self.inputs, **self.options())
        return request_from_pb(msg, timeout=None)


# ---- reading ------------------------------------------------------------------------


def read_line(raw: bytes | str, *, line: int | None, fmt: Format) -> dict[str, Any]:
    """One line (or a lone request's body) as a record's fields; ``InvalidRequestError``
    for text that is not a JSON object, or a field that is not one of a record's."""
    if fmt == "text":
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return {"text": text.strip()}
    what = "request body" if line is None else f"line {line}"
    doc = parse_json(raw.encode() if isinstance(raw, str) else raw, what)
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"{what}: must be a JSON object (one request), got {_kind(doc)}")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"{unknown[0]}: not a field of a request (fields: {', '.join(sorted(FIELDS))})"
        )
    return doc


def record_id(doc: Mapping[str, Any]) -> RecordId | None:
    """The record's ``id``, checked: a string of at most 128 characters or an integer."""
    rid = doc.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise InvalidRequestError(f"id: must be a string or an integer, got {_kind(rid)}")
    if isinstance(rid, str) and len(rid) > MAX_REQUEST_ID_LEN:
        raise InvalidRequestError(
            f"id: {len(rid)} characters, at most {MAX_REQUEST_ID_LEN} allowed"
        )
    return rid


def record_model(doc: Mapping[str, Any], default: str) -> tuple[str, str]:
    """The model and version a record names, else ``default`` (and its latest version)."""
    model = doc.get("model", default)
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: must be a model's name (a non-empty string)")
    version = doc.get("version", "")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise InvalidRequestError(f"version: must be a number or a string, got {_kind(version)}")
    return model, version


def parse_record(
    doc: Mapping[str, Any],
    *,
    key: RecordKey,
    model: str,
    version: str,
    input_vocabulary: Sequence[str] = (),
) -> Record:
    """A record from its fields (``read_line``); ``input_vocabulary``: its model's, which
    ``text`` and s-expression trees are spelled in."""
    given = [f for f in INPUT_FIELDS if f in doc]
    if len(given) != 1:
        raise InvalidRequestError(
            "input: give exactly one of tokens, vectors, tree or text"
            + (f" (got {', '.join(given)})" if given else "")
        )
    field = given[0]
    inputs = _inputs(field, doc[field], model, input_vocabulary)
    top_k = doc.get("top_k")
    if top_k is not None:
        top_k = _int("top_k", top_k)
    return Record(
        key=key,
        model=model,
        version=version,
        inputs=inputs,
        top_k=top_k,
        max_output_length=_int("max_output_length", doc.get("max_output_length", 0)),
        return_vectors=_bool("return_vectors", doc.get("return_vectors", False)),
        priority=_int("priority", doc.get("priority", 0)),
    )


def _inputs(
    field: str, value: Any, model: str, vocabulary: Sequence[str]
) -> np.ndarray | TreeInput:
    if field == "tokens":
        if not isinstance(value, list) or not all(
            type(t) is int
            for t in value  # no bools, no floats
        ):
            raise InvalidRequestError("tokens: must be an array of integer token ids")
        try:
            return np.array(value, dtype=np.int64)
        except OverflowError:
            raise InvalidRequestError("tokens: a token id does not fit 64 bits") from None
    if field == "vectors":
        if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
            raise InvalidRequestError("vectors: must be an array of rows (arrays of numbers)")
        widths = {len(row) for row in value}
        if len(widths) > 1:
            raise InvalidRequestError(
                f"vectors: rows of different lengths ({sorted(widths)}); one width per model"
            )
        if any(isinstance(x, bool) or not isinstance(x, int | float) for row in value for x in row):
            raise InvalidRequestError("vectors: every value must be a number")
        return np.array(value, dtype=np.float32).reshape(len(value), widths.pop() if value else 0)
    if field == "tree":
        return _tree(value, model, vocabulary)
    if not isinstance(value, str):
        raise InvalidRequestError(f"text: must be a string, got {_kind(value)}")
    if not vocabulary:
        raise InvalidRequestError(f"text: model {model!r} has no vocabulary; send tokens")
    try:
        return np.array(encode(value, vocabulary), dtype=np.int64)
    except ValueError as exc:
        raise InvalidRequestError(f"text: {exc}") from None


def _tree(value: Any, model: str, vocabulary: Sequence[str]) -> TreeInput:
    """An s-expression of the vocabulary, or ``[[token, [children]], ...]`` per node."""
    if isinstance(value, str):
        if not vocabulary:
            raise InvalidRequestError(
                f"tree: model {model!r} has no vocabulary; send [[token, [children]], ...]"
            )
        try:
            tokens, children = parse_sexpr(value, vocabulary)
        except ValueError as exc:
            raise InvalidRequestError(f"tree: {exc}") from None
        return TreeInput(tokens=np.array(tokens, dtype=np.int64), children=children)
    bad = InvalidRequestError(
        "tree: must be an s-expression string or an array of [token, [children]] nodes"
    )
    if not isinstance(value, list):
        raise bad
    if len(value) > MAX_TREE_NODES:
        raise InvalidRequestError(
            f"tree: {len(value)} nodes, no model takes more than {MAX_TREE_NODES}"
        )
    tokens, children = [], []
    for node in value:
        if (
            not isinstance(node, list)
            or len(node) != 2
            or type(node[0]) is not int
            or not isinstance(node[1], list)
            or not all(type(c) is int for c in node[1])
        ):
            raise bad
        tokens.append(node[0])
        children.append(node[1])
    return TreeInput(tokens=np.array(tokens, dtype=np.int64), children=children)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name}: must be an integer, got {_kind(value)}")
    if not -(2**31) <= value < 2**31:
        raise InvalidRequestError(f"{name}: {value} is out of range")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name}: must be true or false, got {_kind(value)}")
    return value


# ---- answers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outputs:
    """A request's outputs, steps stacked: what an answer line carries."""

    top_ids: np.ndarray | None
    """``[steps, k]`` int64, best first; ``None`` when ``top_k`` was 0."""
    top_scores: np.ndarray | None
    vectors: np.ndarray | None
    """``[steps, output_dim]`` float32, when asked for."""

    @property
    def num_steps(self) -> int:
        a = self.top_ids if self.top_ids is not None else self.vectors
        return 0 if a is None else len(a)

    @classmethod
    def of_blocks(cls, blocks: Sequence[StepBlock]) -> Outputs:
        """From the engine's blocks of one request (in-process)."""
        return cls(
            _stack([b.top_ids for b in blocks]),
            _stack([b.top_scores for b in blocks]),
            _stack([b.vectors for b in blocks]),
        )

    @classmethod
    def of_steps(cls, steps: Sequence[StepOutput]) -> Outputs:
        """From a client's ``StepOutput``s."""
        return cls(
            _stack([s.top_ids[None] for s in steps if s.top_ids is not None]),
            _stack([s.top_scores[None] for s in steps if s.top_scores is not None]),
            _stack([s.vector[None] for s in steps if s.vector is not None]),
        )


def _stack(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    arrays = [p for p in parts if p is not None]
    if not arrays:
        return None
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _head(key: RecordKey) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if key.line is not None:
        doc["line"] = key.line
    if key.id is not None:
        doc["id"] = key.id
    return doc


def answer(
    key: RecordKey,
    *,
    model: str,
    version: int | str,
    finish_reason: FinishReason | None,
    outputs: Outputs,
    output_vocabulary: Sequence[str] = (),
) -> dict[str, Any]:
    """A record's answer as a JSON-ready object."""
    doc = _head(key)
    doc.update(
        model=model,
        version=str(version),
        finish_reason=None if finish_reason is None else finish_reason.value,
        steps=outputs.num_steps,
    )
    if outputs.top_ids is not None and outputs.top_scores is not None:
        doc["top_ids"] = outputs.top_ids.tolist()
        doc["top_scores"] = outputs.top_scores.tolist()
        if output_vocabulary and outputs.top_ids.shape[1:] != (0,):
            doc["text"] = detokenize(outputs.top_ids[:, 0].tolist(), output_vocabulary)
    if outputs.vectors is not None:
        doc["vectors"] = outputs.vectors.tolist()
    return doc


def error_answer(key: RecordKey, error: BatchMakerError) -> dict[str, Any]:
    """A record that failed: its error, with the status code it would have had on gRPC."""
    doc = _head(key)
    doc["error"] = {"code": error.code.value, "message": error.message}
    return doc


def dumps(doc: Mapping[str, Any]) -> bytes:
    """One answer as one line (compact JSON, then a newline)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def answer_key(doc: Mapping[str, Any]) -> RecordKey:
    """The key an answer line was written for (``--resume`` reads them back)."""
    line = doc.get("line")
    return RecordKey(line if isinstance(line, int) else None, doc.get("id"))


def failed(doc: Mapping[str, Any]) -> bool:
    """Whether an answer is an error."""
    return "error" in doc
