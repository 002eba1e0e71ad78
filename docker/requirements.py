"""Print the requirements of gradlab's base install plus the given extras, one per line.

The image build installs these before it copies the source, so a change to the code reuses
the (large) dependency layers. Only the standard library: it runs in the build stage before
anything is installed.

    python3 docker/requirements.py pyproject.toml api
    python3 docker/requirements.py pyproject.toml worker --only torch torchvision
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

SELF_REFERENCE = re.compile(r"^gradlab\[(?P<extras>[^\]]+)\]$")
NAME = re.compile(r"^[A-Za-z0-9._-]+")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies and those of ``extras``, with ``gradlab[...]`` references expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    found: list[str] = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            nested = SELF_REFERENCE.match(line.replace(" ", ""))
            if nested:
                pending.extend(nested["extras"].split(","))
            elif line not in found:
                found.append(line)
    return found


def distribution_name(requirement: str) -> str:
    match = NAME.match(requirement.strip())
    return match.group(0).lower().replace("_", "-") if match else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--only", nargs="+", help="print only these distributions")
    args = parser.parse_args(argv)
    lines = requirements(args.pyproject, args.extras)
    if args.only:
        wanted = {name.lower() for name in args.only}
        lines = [line for line in lines if distribution_name(line) in wanted]
        if {distribution_name(line) for line in lines} != wanted:
            raise SystemExit(f"not all of {sorted(wanted)} are requirements of {args.extras}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
