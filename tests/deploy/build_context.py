"""The Docker build context as the Docker CLI would send it: the repository root less what
``.dockerignore`` excludes.

The matching follows moby's ``patternmatcher`` (what ``docker build`` and BuildKit use):
patterns are cleaned paths; ``*`` and ``?`` stop at ``/``; ``**`` spans any number of
folders; a pattern that matches a parent folder matches everything under it; a ``!``
pattern re-includes; the last pattern that matches decides. It reads files and nothing else.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The build context of both Dockerfiles (``docker build -f deploy/docker/Dockerfile.cpu .``)."""


@dataclass(frozen=True)
class IgnorePattern:
    """One ``.dockerignore`` line."""

    text: str
    """The cleaned pattern, without its ``!``."""
    exclusion: bool
    """A ``!`` line: it re-includes what it matches."""
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out.append(".*" if i + 1 >= len(pattern) else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise ValueError(f".dockerignore: unterminated character class in {pattern!r}")
            cls = pattern[i + 1 : end]
            out.append("[" + ("^" + cls[1:] if cls.startswith("!") else cls) + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def read_dockerignore(path: Path = REPO_ROOT / ".dockerignore") -> list[IgnorePattern]:
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        text = posixpath.normpath(line)
        if len(text) > 1 and text.startswith("/"):
            text = text[1:]
        patterns.append(IgnorePattern(text, exclusion, _compile(text)))
    return patterns


def is_excluded(rel_path: str, patterns: list[IgnorePattern]) -> bool:
    """Whether ``rel_path`` (relative to the context, ``/``-separated) stays out of the
    context: moby's ``MatchesOrParentMatches``."""
    path = posixpath.normpath(rel_path)
    parents = posixpath.dirname(path).split("/") if "/" in path else []
    matched = False
    for p in patterns:
        if p.exclusion != matched:
            continue  # an exclusion only matters once matched, an inclusion only before
        hit = p.match(path) or any(p.match("/".join(parents[: i + 1])) for i in range(len(parents)))
        if hit:
            matched = not p.exclusion
    return matched


def context_files(root: Path = REPO_ROOT) -> set[str]:
    """Every file the CLI would send: ``/``-separated paths relative to ``root``."""
    patterns = read_dockerignore(root / ".dockerignore")
    files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # Prune folders that are excluded and that no "!" pattern reaches into (.venv,
        # .git): a speed-up that changes no answer.
        dirnames[:] = [
            d
            for d in dirnames
            if not is_excluded(prefix + d, patterns) or _may_reinclude(prefix + d, patterns)
        ]
        for name in filenames:
            if not is_excluded(prefix + name, patterns):
                files.add(prefix + name)
    return files


def _may_reinclude(folder: str, patterns: list[IgnorePattern]) -> bool:
    for p in patterns:
        if not p.exclusion:
            continue
        literal = re.split(r"[*?\[\\]", p.text, maxsplit=1)[0]
        if literal.startswith(folder + "/") or folder.startswith(literal) or literal == folder:
            return True
    return False
