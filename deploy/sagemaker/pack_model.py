"""Pack a model repository into the ``model.tar.gz`` SageMaker unpacks into /opt/ml/model.

    python deploy/sagemaker/pack_model.py REPOSITORY [-o model.tar.gz] [--models a,b]

The archive holds the repository's own layout at its root, ``<model>/<version>/
config.json`` and ``model.safetensors`` (and ``<model>/model.json``, a version policy, when
there is one), which is what ``batchmaker serve --sagemaker`` reads from /opt/ml/model.
Every packed version is loaded first, so a folder the server would refuse is refused here,
before an upload and an endpoint that never turns healthy. The archive is reproducible:
sorted entries, no owners, a fixed time, so the same models give the same bytes (and the
same S3 ETag).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
from pathlib import Path

from batchmaker.repository.store import POLICY_FILE, ModelRepository

MEMBERS = ("config.json", "model.safetensors")
"""The files of a version folder that the server reads; anything else is left out."""


def pack(repository: Path, out: Path, models: list[str] | None = None) -> list[str]:
    """Write ``out``; returns the ``model@version`` keys packed. ``ValueError`` names a
    model that does not load."""
    repo = ModelRepository(repository)
    loaded, failed = repo.load_all(models)
    if failed:
        key, why = next(iter(failed.items()))
        raise ValueError(f"{key}: {why}")
    if not loaded:
        raise ValueError(f"{repository}: no model to pack")
    files: list[Path] = []
    for m in sorted(loaded, key=lambda m: (m.name, m.version)):
        folder = repository / m.name / str(m.version)
        files += [folder / name for name in MEMBERS]
        policy = repository / m.name / POLICY_FILE
        if policy.is_file() and policy not in files:
            files.append(policy)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(repository)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    with out.open("wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return [m.key for m in loaded]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repository", type=Path, help="a model repository: <model>/<version>/")
    p.add_argument("-o", "--output", type=Path, default=Path("model.tar.gz"))
    p.add_argument("--models", help="comma-separated models to pack; default every one")
    args = p.parse_args(argv)
    models = [n.strip() for n in args.models.split(",")] if args.models else None
    try:
        keys = pack(args.repository, args.output, models)
    except ValueError as exc:
        print(f"pack_model: {exc}", file=sys.stderr)
        return 2
    size = args.output.stat().st_size / 2**20
    print(f"{args.output}: {', '.join(keys)} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
