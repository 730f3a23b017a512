"""requirements/cpu.lock: exact, CPU-only, consistent with pyproject.toml's ranges; and bench/lock_drift.py
reports what an environment has that the lock does not say."""
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from lock_drift import canonical, drift, read_lock  # noqa: E402

LOCK = read_lock(REPO / "requirements" / "cpu.lock")


def test_the_lock_is_exact_and_has_no_cuda_library():
    text = (REPO / "requirements" / "cpu.lock").read_text()
    pinned_lines = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(pinned_lines) == len(LOCK) > 100 and all("==" in line for line in pinned_lines)
    assert LOCK["torch"].endswith("+cpu")
    assert not [n for n in LOCK if n.startswith(("nvidia-", "cuda-", "triton"))]


def test_every_dependency_is_locked_at_a_version_pyproject_allows():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        version = LOCK.get(canonical(req.name))
        assert version is not None, f"{req.name} is not in the lock: make lock"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}"


def test_drift_names_changed_missing_and_unlocked_packages_but_not_the_build_tag():
    lock = {"torch": "2.13.0+cpu", "trl": "1.16.0", "rich": "15.0.0"}
    have = {"torch": "2.13.0+cu128", "trl": "1.17.0", "extra": "1.0", "pip": "25.0", "posttrain": "0.1.0"}
    assert drift(lock, have) == [("extra", "-", "1.0"), ("rich", "15.0.0", "-"), ("trl", "1.16.0", "1.17.0")]


def test_setup_keeps_pips_configuration_warnings_out_of_its_output(tmp_path):
    """pip prints a warning per configured index folder it cannot read ("Location ... is ignored"): -qq."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=60).stdout
    installs = [part for line in dry.splitlines() for part in line.split(";") if "-m pip install" in part]
    assert len(installs) >= 3 and all(" -qq " in part for part in installs), installs
