"""Print `name==X` for each named dependency, X being the lowest version pyproject.toml allows (its >= or ==
bound), for `make test-min`."""
import re
import sys
import tomllib
from pathlib import Path

deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
for name in sys.argv[1:]:
    spec = next((d for d in deps if re.match(rf"{re.escape(name)}\s*[=<>!~]", d)), None)
    low = re.search(r"(?:>=|==)\s*([\w.]+?)(?:\.\*)?(?:,|$)", spec or "")
    if low is None:
        sys.exit(f"pyproject.toml gives {name} no lower bound")
    print(f"{name}=={low.group(1)}", end=" ")
