"""Which posttrain made a run, and how it was called: its version, the git commit of its source (where it
runs from a git checkout) and the command line with its overrides. run.json and every stage manifest
record them; `posttrain --version` prints the first two."""
import argparse
import shlex
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def posttrain_source() -> dict:
    """{"version", "git_commit", "git_dirty"}; the git keys are None outside a git checkout (a wheel install)."""
    try:
        version = metadata.version("posttrain")
    except metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # tracked files only: a checkout's run folders and venvs are untracked and say nothing about the code
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"version": version, "git_commit": commit, "git_dirty": dirty}


def describe(source: dict) -> str:
    """'posttrain 0.1.0 (git 1a2b3c4d, uncommitted changes)'."""
    text = f"posttrain {source.get('version') or '?'}"
    if source.get("git_commit"):
        text += f" (git {source['git_commit'][:12]}{', uncommitted changes' if source.get('git_dirty') else ''})"
    return text


def command_text(argv: list[str] | None) -> str:
    """The command line as a shell would take it back."""
    return shlex.join(argv) if argv else ""


class VersionAction(argparse.Action):
    """--version: posttrain's version and, in a git checkout, its commit (looked up only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print posttrain's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe(posttrain_source()))
        parser.exit()
