"""The two Dockerfiles in deploy/docker/, parsed into stages as a builder reads them
(dockerfile-parse does the lexing: continuation lines, JSON forms, ARG substitution in
FROM). It reads files and runs nothing."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from build_context import REPO_ROOT
from dockerfile_parse import DockerfileParser

DOCKERFILES = {
    "cpu": REPO_ROOT / "deploy/docker/Dockerfile.cpu",
    "cuda": REPO_ROOT / "deploy/docker/Dockerfile.cuda",
}


@dataclass
class Stage:
    """One ``FROM`` and what follows it, as the builder sees it."""

    base: str
    """The image after ARG substitution (``python:3.11.13-slim-bookworm``)."""
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    """(INSTRUCTION, value) in order, comments left out."""
    env: dict[str, str] = field(default_factory=dict)
    """ENV at the end of the stage, unexpanded (``PATH=/opt/venv/bin:$PATH``)."""
    args: dict[str, str] = field(default_factory=dict)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    def last(self, instruction: str) -> str:
        found = self.values(instruction)
        assert found, f"no {instruction} in stage {self.name}"
        return found[-1]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: its stages in order; the last is the image that runs."""

    path: Path
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def entrypoint(self) -> list[str]:
        value = self.final.last("ENTRYPOINT")
        assert value.lstrip().startswith("["), "ENTRYPOINT must be the exec form"
        argv: list[str] = json.loads(value)
        return argv

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """The HEALTHCHECK's options and its command as an argv."""
        options_text, sep, command = self.final.last("HEALTHCHECK").partition("CMD ")
        assert sep, "HEALTHCHECK needs a CMD"
        options = dict(opt.removeprefix("--").split("=", 1) for opt in options_text.split())
        command = command.strip()
        argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
        return options, argv


def parse_dockerfile(path: Path) -> Dockerfile:
    """Stages with their instructions, and ENV and ARG as they stand at each stage's end."""
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()), env_replace=False)
    bases = parser.parent_images  # ARGs before the first FROM substituted
    stages: list[Stage] = []
    for instr, ctx in zip(parser.structure, parser.context_structure, strict=True):
        name, value = instr["instruction"], instr["value"]
        if name == "FROM":
            _, _, alias = value.partition(" AS ")
            stages.append(Stage(base=bases[len(stages)], name=alias.strip() or None))
        elif name != "COMMENT" and stages:
            stages[-1].instructions.append((name, value))
        if stages:
            stages[-1].env = dict(ctx.envs)
            stages[-1].args = dict(ctx.args)
    return Dockerfile(path, stages)
