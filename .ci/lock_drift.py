"""`python .ci/lock_drift.py requirements.lock FREEZE`: the packages whose version in FREEZE
(`pip freeze` of an install without the lock) is not the locked one, for CI's report on the
newest versions the ranges allow."""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins(path: str) -> dict[str, set[str]]:
    """Name -> versions: the lock may pin a package once per Python (`; python_version…`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, version in PIN.findall(Path(path).read_text()):
        found[re.sub(r"[-_.]+", "-", name).lower()].add(version)
    return found


def main(lock: str, freeze: str) -> None:
    locked = pins(lock)
    drift = [
        f"   {name}: {' or '.join(sorted(locked.get(name, {'(not locked)'})))} -> {version}"
        for name, versions in sorted(pins(freeze).items())
        for version in sorted(versions - locked.get(name, set()))
    ]
    print("\n".join(drift) if drift else "   nothing: the lock has the newest versions")


if __name__ == "__main__":
    main(*sys.argv[1:3])
