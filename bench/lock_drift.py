"""Compare the packages installed in this interpreter's environment with a lock file (`name==version` lines).

    python bench/lock_drift.py requirements/cpu.lock           # print what drifted (make test-latest)
    python bench/lock_drift.py requirements/cpu.lock --check   # exit 1 unless every locked version is installed
    python bench/lock_drift.py requirements/cpu.lock requirements/models.txt --check   # several pin files, one set

A local build tag is ignored (the lock says torch==2.13.0, TORCH_INDEX installs 2.13.0+cpu or +cu128).
"""
import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

# Installed by venv/pip itself or being the project: never in the lock, never drift.
TOOLING = {"pip", "posttrain"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def drift(lock: dict[str, str], have: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for each package whose version differs, is missing, or is not in the lock."""
    rows = []
    for name in sorted(set(lock) | set(have) - TOOLING):
        want, got = lock.get(name, "-"), have.get(name, "-")
        if want.split("+")[0] != got.split("+")[0]:
            rows.append((name, want, got))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path, nargs="+", help="pin files (name==version lines), read as one set")
    ap.add_argument("--check", action="store_true", help="exit 1 if a locked version is missing or different")
    args = ap.parse_args()
    lock = {name: version for path in args.lock for name, version in read_lock(path).items()}
    rows = drift(lock, installed())
    if not rows:
        print(f"all {len(lock)} packages match {' + '.join(map(str, args.lock))}")
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'package':<{width}}  {'lock':<14}  installed   ({len(rows)} of {len(lock)} locked packages differ)")
    for name, want, got in rows:
        print(f"{name:<{width}}  {want:<14}  {got}")
    # Packages present but not locked (a stale venv) are reported, not fatal: the locked set is what runs.
    return int(args.check and any(want != "-" for _, want, _ in rows))


if __name__ == "__main__":
    sys.exit(main())
