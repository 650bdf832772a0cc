"""``batchmaker infer``, ``metadata`` and ``health``: client calls to a running server.

Imports no torch (a client process needs grpc, protobuf and numpy only), so these
commands start fast, which matters for ``health`` in a container HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from batchmaker.cli import flags


def add_infer_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "infer",
        parents=[common],
        help="send one request and print its outputs as they stream in",
        description="Send one request; print each step as it arrives (exit 1 on an error status).",
    )
    flags.add_client_flags(p)
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--version", default=None, help="model version; default the latest")
    inp = p.add_mutually_exclusive_group(required=True)
    inp.add_argument("--tokens", "-t", type=int, nargs="+", metavar="ID", help="token ids")
    inp.add_argument(
        "--vectors", metavar="JSON", help="a JSON list of equal-length float lists, one per step"
    )
    inp.add_argument(
        "--text",
        metavar="TEXT",
        help="whitespace-separated tokens of the model's vocabulary (see its metadata)",
    )
    inp.add_argument(
        "--tree",
        metavar="SEXPR",
        help='a tree for a TreeLSTM model as an s-expression of its vocabulary: "(+ 3 (* 4 2))"',
    )
    inp.add_argument(
        "--tree-json",
        metavar="JSON",
        help="a tree as a JSON list of [token id, [child indices]] per node",
    )
    p.add_argument("--top-k", "-k", type=int, default=None, help="best ids per step (default 1)")
    p.add_argument("--return-vectors", action="store_true", help="print full output vectors")
    p.add_argument("--max-length", type=int, default=0, help="cap on output steps")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--id", default="", help="request id, echoed back")
    p.add_argument("--unary", action="store_true", help="one response at the end, no stream")
    p.add_argument("--json", action="store_true", help="one JSON object per step")


def add_metadata_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "metadata", parents=[common], help="print server metadata, or one model's, as JSON"
    )
    flags.add_client_flags(p)
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--version", default=None)


def add_health_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the server's grpc health says SERVING (container HEALTHCHECKs)",
        description="Ask grpc.health.v1.Health/Check; print the status; exit 0 when it is "
        "SERVING and 1 otherwise (starting, draining, unreachable).",
    )
    flags.add_client_flags(p, timeout=5.0)
    p.add_argument("--service", default="", help="a service's full name; default: the whole server")


def run_infer(args: argparse.Namespace) -> int:
    with flags.open_client(args) as client:
        vocab: Sequence[str] = ()
        family = ""
        if args.text is not None or args.tree is not None:
            meta = client.model_metadata(args.model, args.version, timeout=args.timeout)
            if not meta.input_vocabulary:
                raise flags.bad_input(f"model {args.model!r} has no vocabulary: use --tokens")
            vocab, family = list(meta.output_vocabulary), meta.family
            inputs = _parse_input(args, list(meta.input_vocabulary))
        else:
            inputs = _parse_input(args, [])
        options: dict[str, Any] = {
            "version": args.version,
            "request_id": args.id,
            "priority": args.priority,
            "top_k": args.top_k,
            "return_vectors": args.return_vectors,
            "max_output_length": args.max_length,
        }
        emitted: list[int] = []

        def show(step: Any) -> None:
            if step.top_ids is not None and len(step.top_ids):
                emitted.append(int(step.top_ids[0]))
            print(_format_step(step, args.json, vocab), flush=True)

        if args.unary:
            result = client.infer(args.model, inputs, timeout=args.timeout, **options)
            for step in result.steps:
                show(step)
            reason = result.finish_reason
        else:
            stream = client.infer_stream(args.model, inputs, timeout=args.timeout, **options)
            for step in stream:
                show(step)
            reason = stream.finish_reason
    summary = _summary(family, emitted, vocab) if vocab and emitted else None
    if args.json:
        print(json.dumps({"finish_reason": reason, **(dict([summary]) if summary else {})}))
    else:
        if summary is not None:
            print(f"{summary[0]}: {summary[1]}")
        print(f"finished: {reason}")
    return 0


def _summary(family: str, emitted: Sequence[int], vocabulary: Sequence[str]) -> tuple[str, str]:
    from batchmaker.client.text import detokenize

    """What the best ids mean, in words: a seq2seq model's output text, a tree's class, or
    the word a language model predicts after the last input token."""
    if family == "seq2seq":
        return "output", detokenize(emitted, vocabulary)
    if family == "treelstm":
        return "class", detokenize(emitted[-1:], vocabulary)
    return "next", detokenize(emitted[-1:], vocabulary)


def _parse_input(args: argparse.Namespace, vocabulary: list[str]) -> Any:
    """The request's inputs from whichever input flag was given."""
    import numpy as np

    from batchmaker.types import TreeInput

    try:
        if args.tokens is not None:
            return args.tokens
        if args.vectors is not None:
            return np.asarray(json.loads(args.vectors), dtype=np.float32)
        if args.tree_json is not None:
            nodes = json.loads(args.tree_json)
            return TreeInput(
                tokens=[int(n[0]) for n in nodes], children=[[int(c) for c in n[1]] for n in nodes]
            )
        from batchmaker.client.text import encode, parse_sexpr

        if args.tree is not None:
            tokens, children = parse_sexpr(args.tree, vocabulary)
            return TreeInput(tokens=tokens, children=children)
        return encode(args.text, vocabulary)
    except (ValueError, TypeError, IndexError) as exc:
        flag = next(
            f"--{name.replace('_', '-')}"
            for name in ("tokens", "vectors", "tree_json", "tree", "text")
            if getattr(args, name) is not None
        )
        raise flags.bad_input(f"{flag}: {exc}") from None


def _format_step(step: Any, as_json: bool, vocabulary: Sequence[str] = ()) -> str:
    import numpy as np

    top = (
        []
        if step.top_ids is None
        else [(int(i), float(s)) for i, s in zip(step.top_ids, step.top_scores, strict=True)]
    )

    def name(i: int) -> str:
        return f"{vocabulary[i]!r} " if 0 <= i < len(vocabulary) else ""

    if as_json:
        obj: dict[str, Any] = {"step": step.step, "top_ids": [i for i, _ in top]}
        if vocabulary:
            obj["top_tokens"] = [
                vocabulary[i] if 0 <= i < len(vocabulary) else None for i, _ in top
            ]
        obj["top_scores"] = [round(s, 6) for _, s in top]
        if step.vector is not None:
            obj["vector"] = [round(float(v), 6) for v in step.vector]
        return json.dumps(obj)
    line = f"step {step.step:4d}: " + "  ".join(f"{name(i)}{i} ({s:.3f})" for i, s in top)
    if step.vector is not None:
        line += (
            f"  vector[{len(step.vector)}] = "
            + np.array2string(step.vector[:8], precision=3, separator=", ").rstrip("]")
            + (", ...]" if len(step.vector) > 8 else "]")
        )
    return line


def run_metadata(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with flags.open_client(args) as client:
        msg = (
            client.model_metadata(args.model, args.version, timeout=args.timeout)
            if args.model
            else client.server_metadata(timeout=args.timeout)
        )
    print(json_format.MessageToJson(msg, indent=2))
    return 0


def run_health(args: argparse.Namespace) -> int:
    from batchmaker.errors import BatchMakerError

    with flags.open_client(args) as client:
        try:
            serving = client.is_serving(service=args.service, timeout=args.timeout)
        except BatchMakerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1
