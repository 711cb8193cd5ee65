#!/usr/bin/env python3
"""Installs vispipe's dependencies (the core plus extras), not vispipe itself.

The images install the dependencies from `pyproject.toml` and `constraints.txt`
alone, before the source is copied, so a code change rebuilds only the last
layer. `--without` leaves out distributions that a dependency declares but the
image never imports (TensorFlow's wheel declares Keras and TensorBoard, which a
server loading SavedModels does not use), together with whatever only they
pull in; `pip check` afterwards may report exactly those as missing, nothing
else.

    python scripts/install_deps.py --extras serve --without keras,tensorboard
    python scripts/install_deps.py --extras train --python /opt/venv/bin/python

`--python` installs into another environment with this Python's pip (pip >=
22.3), so that environment needs no pip of its own. `--wheel-dir` keeps the
downloaded wheels (in the images: a build cache), so TensorFlow's 645 MB wheel
is fetched once, not once per resolution and image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh virtual environment: pip's own copy
    from pip._vendor.packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MISSING = re.compile(r"^(\S+) \S+ requires (\S+), which is not installed\.$")


def canonical(name: str) -> str:
    """PEP 503 name: `PyYAML` and `pyyaml`, `tf_keras` and `tf-keras` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: str, extras: list[str]) -> list[str]:
    """The core dependencies plus those of `extras`, self-references expanded.

    Args:
        pyproject: Path of `pyproject.toml`.
        extras: Extra names, e.g. `["serve"]`.

    Returns:
        Requirement strings as written in `pyproject.toml`.
    """
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    own_name = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    wanted, seen = list(extras), set()
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"--extras: expected names from {sorted(optional)}, got {extra!r}.")
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonical(requirement.name) == own_name:  # e.g. vispipe[train]
                wanted += sorted(requirement.extras)
            else:
                found.append(text)
    return found


class Pip:
    """pip, installing into `target` (None: this Python's environment) from `wheel_dir`.

    Every wheel of a resolution is downloaded (sdists built) into `wheel_dir`
    once; resolving and installing then read only that folder, and a later
    run with the same folder (a build cache) downloads nothing it holds.
    """

    def __init__(self, wheel_dir: str, target: str | None = None):
        self.wheel_dir = wheel_dir
        self.command = [sys.executable, "-m", "pip"] + (["--python", target] if target else [])

    def run(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], check=not capture, text=True,
                              capture_output=capture)

    def fetch(self, requirements: list[str], constraints: str) -> None:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                        self.wheel_dir, "-c", constraints, *requirements], check=True)

    def install(self, *args: str) -> None:
        self.run("install", "--quiet", "--no-index", "--find-links", self.wheel_dir, *args)


def resolve(pip: Pip, requirements: list[str], constraints: str) -> dict[str, dict]:
    """What pip would install for `requirements`: canonical name -> report item."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        pip.install("--dry-run", "--ignore-installed", "--report", report, "-c", constraints,
                    *requirements)
        with open(report, encoding="utf-8") as f:
            items = json.load(f)["install"]
    return {canonical(item["metadata"]["name"]): item for item in items}


def reachable(resolved: dict[str, dict], roots: list[str], without: set[str]) -> set[str]:
    """Names reachable from `roots` through dependencies that skip `without`."""
    keep: set[str] = set()
    visited: set[tuple[str, frozenset]] = set()
    stack = [(canonical(r.name), frozenset(r.extras)) for r in map(Requirement, roots)
             if r.marker is None or r.marker.evaluate()]
    while stack:
        name, extras = stack.pop()
        if name in without or name not in resolved or (name, extras) in visited:
            continue
        visited.add((name, extras))
        keep.add(name)
        for text in resolved[name]["metadata"].get("requires_dist") or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
                stack.append((canonical(requirement.name), frozenset(requirement.extras)))
    return keep


def check(pip: Pip, without: set[str]) -> None:
    """`pip check`, where only distributions left out on purpose may be missing."""
    result = pip.run("check", capture=True)
    if result.returncode == 0:
        return
    problems = []
    for line in result.stdout.splitlines():
        missing = _MISSING.match(line)
        if not (missing and canonical(missing.group(2)) in without):
            problems.append(line)
    if result.returncode != 1 or problems:
        raise SystemExit("pip check failed:\n" + "\n".join(problems or [result.stderr]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml")
    parser.add_argument("--without", default="",
                        help="comma-separated distributions to leave out, with what only they need")
    parser.add_argument("--pyproject", default=os.path.join(ROOT, "pyproject.toml"))
    parser.add_argument("--constraints", default=os.path.join(ROOT, "constraints.txt"))
    parser.add_argument("--python", help="install into this interpreter's environment")
    parser.add_argument("--wheel-dir",
                        help="keep the downloaded wheels here (default: a temporary folder)")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    without = {canonical(n) for n in args.without.split(",") if n.strip()}
    requirements = project_requirements(args.pyproject, extras)
    with tempfile.TemporaryDirectory() as tmp:
        pip = Pip(args.wheel_dir or tmp, args.python)
        pip.fetch(requirements, args.constraints)
        if not without:
            pip.install("-c", args.constraints, *requirements)
        else:
            resolved = resolve(pip, requirements, args.constraints)
            unknown = without - set(resolved)
            if unknown:
                raise SystemExit(f"--without: {sorted(unknown)} would not be installed anyway; "
                                 f"expected names among {sorted(resolved)}.")
            keep = reachable(resolved, requirements, without)
            pip.install("--no-deps", *sorted(
                f"{resolved[n]['metadata']['name']}=={resolved[n]['metadata']['version']}"
                for n in keep))
            print(f"left out: {', '.join(sorted(set(resolved) - keep))}", file=sys.stderr)
        check(pip, without)
    return 0


if __name__ == "__main__":
    sys.exit(main())
