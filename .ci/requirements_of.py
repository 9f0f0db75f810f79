"""`python .ci/requirements_of.py pyproject.toml [EXTRA ...]`: the requirements pyproject.toml
names (its dependencies, and those of each EXTRA), one a line, for `pip install -r`: CI
installs the newest versions they allow without building LingoLoop itself (see .ci/run)."""

from __future__ import annotations

import sys
import tomllib


def main(path: str, *extras: str) -> None:
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    print("\n".join(wanted))


if __name__ == "__main__":
    main(*sys.argv[1:])
