"""``batchmaker models list|load|unload`` and ``batchmaker import``: what a server serves.

``models`` calls a running server's ``ModelRepository`` service; ``import`` writes a
repository version from a trained ``state_dict`` on disk (it imports torch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from batchmaker.cli import flags


def add_models_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "models",
        parents=[common],
        help="list, load or unload models on a running server (its model repository)",
        description="list: every model version in the server's repository and its state. "
        "load NAME: serve its version policy's versions (or --version V ...). "
        "unload NAME: stop serving it (or --version V ...) once in-flight requests finish. "
        "load and unload need an admin token (--token-file or BATCHMAKER_TOKEN), unless the "
        "server runs with --allow-unauthenticated-admin; else PERMISSION_DENIED.",
    )
    flags.add_client_flags(p)
    p.add_argument("action", choices=("list", "load", "unload"))
    p.add_argument("name", nargs="?", help="the model (load, unload)")
    p.add_argument("--version", dest="versions", action="append", default=[], help="repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_import_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="turn a trained torch state_dict into a model repository version",
        description="Read a state_dict saved with torch.save (loaded with weights_only=True: "
        "no code runs) or a .safetensors file, infer the architecture from its tensor shapes, "
        "and write <repository>/<name>/<version>/ (config.json + model.safetensors).",
    )
    p.add_argument("weights", type=Path, help="the state_dict file (.pt/.pth or .safetensors)")
    p.add_argument("--repository", type=Path, required=True, help="the model repository")
    p.add_argument(
        "--name",
        required=True,
        help="the model's name, its folder under the repository: 1 to 128 of A-Z a-z 0-9 . _ -, "
        "starting with a letter or digit",
    )
    p.add_argument("--version", type=int, default=None, help="default: the next free version")
    p.add_argument(
        "--family",
        choices=("lstm", "gru", "seq2seq"),
        required=True,
        help="lstm/gru: nn.LSTM/nn.GRU alone (vector input) or with embedding/proj; "
        "seq2seq: encoder.* and decoder.* modules (the decoder's cell kind is detected)",
    )
    p.add_argument("--rnn-prefix", default=None, help="key prefix of the nn.LSTM/nn.GRU")
    p.add_argument("--embedding-prefix", default=None, help="key prefix of the nn.Embedding")
    p.add_argument("--proj-prefix", default=None, help="key prefix of the output nn.Linear")
    p.add_argument("--bos", type=int, default=None, help="seq2seq: the decoder's start token")
    p.add_argument("--eos", type=int, default=None, help="seq2seq: the decoder's end token")
    p.add_argument("--max-input-length", type=int, default=None)
    p.add_argument("--max-output-length", type=int, default=None, help="seq2seq decode cap")
    p.add_argument(
        "--vocabulary", type=Path, default=None, help="a file with one input token per line"
    )
    p.add_argument(
        "--output-vocabulary",
        type=Path,
        default=None,
        help="a file with one output token per line",
    )


def run_models(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        raise flags.bad_input(f"models {args.action}: name the model")
    with flags.open_client(args) as client:
        if args.action == "list":
            states = client.repository_index(timeout=args.timeout)
        elif args.action == "load":
            states = client.load_model(args.name, args.versions, timeout=args.timeout)
        else:
            states = client.unload_model(args.name, args.versions, timeout=args.timeout)
    rows = [
        {"name": s.name, "version": s.version, "state": s.state, "reason": s.reason} for s in states
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'MODEL':24s} {'VERSION':>7s}  STATE")
    for r in rows:
        reason = f"  ({r['reason']})" if r["reason"] else ""
        print(f"{r['name']:24s} {r['version']:>7s}  {r['state']}{reason}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from batchmaker.repository.importer import ImportOptions, import_state_dict
    from batchmaker.repository.store import check_model_name

    check_model_name(args.name, what="--name")  # the importer checks too; this names the flag

    def lines(path: Path | None) -> list[str]:
        return [] if path is None else path.read_text().splitlines()

    folder = import_state_dict(
        args.weights,
        args.repository,
        ImportOptions(
            name=args.name,
            family=args.family,
            version=args.version,
            rnn_prefix=args.rnn_prefix,
            embedding_prefix=args.embedding_prefix,
            proj_prefix=args.proj_prefix,
            bos=args.bos,
            eos=args.eos,
            max_input_length=args.max_input_length,
            max_output_length=args.max_output_length,
            vocabulary=lines(args.vocabulary),
            output_vocabulary=lines(args.output_vocabulary),
        ),
    )
    print(f"wrote {folder}")
    return 0
