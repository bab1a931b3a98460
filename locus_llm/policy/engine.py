"""regorus in-process: load a bundle folder, evaluate `data.locus.routing.decision` per call.

A bundle is a folder of `*.rego` files and an optional `data.json`. Its revision is a hash of
their contents (and of the config's data overrides). Hot reload: before each evaluation the
folder is checked for changes; a new bundle that fails to load is rejected with a clear error and
the last good one keeps serving. Input and data cross into regorus as JSON strings (DESIGN.md:
celine-regorus turns Python bools into numbers through set_input(dict)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regorus

from locus_llm.errors import PolicyError

log = logging.getLogger("locus.policy")

DECISION_RULE = "data.locus.routing.decision"


@dataclass(frozen=True)
class PolicyDecision:
    allowed: list[str]
    denied: dict[str, list[str]]
    redact: list[str] = field(default_factory=list)
    redact_zones: list[str] = field(default_factory=list)
    capability_floor: int = 0
    revision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "denied": self.denied,
            "obligations": {"redact": self.redact, "redact_zones": self.redact_zones},
            "capability_floor": self.capability_floor,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle as sources. Immutable: reload swaps the whole object.

    It holds no regorus object: those are "unsendable" (bound to the thread that made them, and
    panicking if used or dropped on another), so each thread compiles its own from these sources.
    """

    modules: tuple[tuple[str, str], ...]  # (path, Rego source)
    data_json: str
    revision: str
    fingerprint: tuple[tuple[str, int, int, int], ...]  # (file, inode, mtime_ns, size)
    watched: tuple[str, ...]  # the folder and files (paths) the fingerprint covers
    files: tuple[str, ...]

    def compile(self) -> regorus.Engine:
        engine = regorus.Engine()
        for path, text in self.modules:
            try:
                engine.add_policy(path, text)
            except Exception as exc:  # regorus raises RuntimeError with a rendered location
                raise PolicyError(f"policy error in {_regorus_message(exc)}") from None
        try:
            engine.add_data_json(self.data_json)
        except Exception as exc:
            raise PolicyError(f"policy data: {_regorus_message(exc)}") from None
        return engine

    def decision_vm(self) -> regorus.Rvm:
        """The decision rule compiled for regorus's VM: about 2.5x faster than the interpreter."""
        try:
            program = regorus.Program.compile_from_modules(
                self.data_json, list(self.modules), [DECISION_RULE]
            )
        except Exception as exc:
            raise PolicyError(f"policy error in {_regorus_message(exc)}") from None
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(self.data_json)
        return vm


def bundle_files(folder: Path, *, tests: bool = False) -> list[Path]:
    if not folder.is_dir():
        raise PolicyError(f"{folder}: policy bundle folder not found")
    files = sorted(folder.glob("*.rego"))
    if not tests:
        files = [f for f in files if not f.name.endswith("_test.rego")]
    if not files:
        raise PolicyError(f"{folder}: no .rego files in the policy bundle")
    return files


def watched_files(folder: Path) -> tuple[str, ...]:
    """The folder and its bundle files, as path strings (cheaper to stat than Path objects)."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(
                e.path for e in entries if e.name.endswith(".rego") or e.name == "data.json"
            )
    except OSError:
        return ()
    return (str(folder), *names)


def fingerprint(paths: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """The folder's and the files' inodes, mtimes and sizes: what changes when the bundle does.

    The folder's own mtime changes when a file is added, removed or atomically replaced, so the
    per-call check stats known names only (no directory listing on the decision path). stat
    follows symlinks: a Kubernetes ConfigMap volume (`routing.rego -> ..data/routing.rego`,
    `..data` swapped atomically to a new revision folder) shows up as new inodes even when a
    file keeps its size and the clock is too coarse to move its mtime.
    """
    try:
        return tuple(
            (path, (st := os.stat(path)).st_ino, st.st_mtime_ns, st.st_size) for path in paths
        )
    except OSError:
        return ()


def load_bundle(
    folder: Path, data_overrides: dict[str, Any] | None = None, *, tests: bool = False
) -> Bundle:
    """Read and compile the bundle once to validate it, or raise PolicyError naming file:line."""
    folder = Path(folder)
    # Read until the folder holds still: a swap between reading two files would mix revisions.
    for _ in range(5):
        watched = watched_files(folder)
        printed = fingerprint(watched)
        files = bundle_files(folder, tests=tests)
        modules = tuple((str(path), _read(path)) for path in files)
        raw_data = _read_data(folder / "data.json")
        if fingerprint(watched_files(folder)) == printed:
            break
    data = deep_merge(raw_data, data_overrides or {})
    data_json = json.dumps(data, sort_keys=True)
    digest = hashlib.sha256()
    for path, text in modules:
        digest.update(Path(path).name.encode() + b"\0" + text.encode() + b"\0")
    digest.update(b"data\0" + data_json.encode())
    bundle = Bundle(
        modules, data_json, digest.hexdigest()[:16], printed, watched, tuple(p.name for p in files)
    )
    bundle.compile()  # validation: engine and VM are dropped here, on this thread
    bundle.decision_vm()
    return bundle


class PolicyEngine:
    """Evaluates the routing decision; thread-safe; hot-reloads its bundle folder."""

    def __init__(
        self, folder: Path, data_overrides: dict[str, Any] | None = None, *, reload: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.data_overrides = data_overrides or {}
        self.reload = reload
        self.last_reload_error: str | None = None
        self._bundle = load_bundle(self.folder, self.data_overrides)
        self._reload_lock = threading.Lock()
        self._local = threading.local()

    @property
    def revision(self) -> str:
        return self._bundle.revision

    def bundle_text(self) -> dict[str, str]:
        """The active bundle's sources by file name (what an MCP resource or a UI shows)."""
        texts = {name: _read(self.folder / name) for name in self._bundle.files}
        data = self.folder / "data.json"
        if data.exists():
            texts["data.json"] = _read(data)
        return texts

    def check_reload(self) -> None:
        """Reload if the folder changed; on failure keep serving the last good bundle."""
        bundle = self._bundle
        if not self.reload or fingerprint(bundle.watched) == bundle.fingerprint:
            return
        with self._reload_lock:
            if fingerprint(self._bundle.watched) == self._bundle.fingerprint:
                return  # another thread reloaded meanwhile
            # what this attempt sees, taken before reading: if the folder changes while it
            # loads, the next call notices and tries again
            watched = watched_files(self.folder)
            attempted = fingerprint(watched)
            try:
                bundle = load_bundle(self.folder, self.data_overrides)
            except PolicyError as exc:
                if self.last_reload_error != str(exc):
                    log.error(
                        "policy reload rejected, keeping revision %s: %s",
                        self._bundle.revision,
                        exc,
                    )
                self.last_reload_error = str(exc)
                # remember the broken state so we do not recompile it on every call
                self._bundle = dataclasses.replace(
                    self._bundle, watched=watched, fingerprint=attempted
                )
                return
            self.last_reload_error = None
            log.info("policy reloaded: revision %s -> %s", self._bundle.revision, bundle.revision)
            self._bundle = bundle

    def evaluate(self, policy_input: dict[str, Any]) -> PolicyDecision:
        if not isinstance(policy_input, dict) or not isinstance(policy_input.get("loci"), dict):
            raise PolicyError(
                "policy input must be an object whose 'loci' is an object of "
                "locus name -> attributes"
            )
        self.check_reload()
        bundle = self._bundle  # one reference for the whole evaluation: never half a bundle
        text = _input_json(policy_input)
        vm = self._thread_vm(bundle)
        try:
            vm.set_input_json(text)
            result = vm.execute()
        except Exception as exc:
            raise PolicyError(f"policy evaluation failed: {_regorus_message(exc)}") from None
        raw = json.loads(result)
        if raw == "<undefined>":
            raise PolicyError(
                f"{DECISION_RULE} is undefined for this input (revision {bundle.revision})"
            )
        return parse_decision(raw, set(policy_input["loci"]), bundle.revision)

    def _thread_vm(self, bundle: Bundle) -> regorus.Rvm:
        # regorus objects are bound to the thread that made them, and a VM holds its input
        # between set and execute: one VM per thread, rebuilt when the revision changes.
        local = self._local
        if getattr(local, "bundle", None) is not bundle:
            local.vm = bundle.decision_vm()
            local.bundle = bundle
        return local.vm


def _input_json(policy_input: dict[str, Any]) -> str:
    try:
        return json.dumps(policy_input)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy input is not JSON: {exc}") from None


def parse_decision(raw: Any, loci: set[str], revision: str) -> PolicyDecision:
    """Check the policy's output against the contract; anything off is a PolicyError."""
    if not isinstance(raw, dict):
        raise PolicyError(f"policy decision must be an object, got {type(raw).__name__}")
    allowed = raw.get("allowed", [])
    denied = raw.get("denied", {})
    obligations = raw.get("obligations", {}) or {}
    if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
        raise PolicyError("policy decision: 'allowed' must be a list of locus names")
    if not isinstance(denied, dict):
        raise PolicyError("policy decision: 'denied' must be an object of locus -> reasons")
    unknown = sorted(set(allowed) - loci)
    if unknown:
        raise PolicyError(f"policy allowed unknown locus {unknown}: configured are {sorted(loci)}")
    both = sorted(set(allowed) & set(denied))
    if both:
        raise PolicyError(f"policy both allowed and denied {both}")
    redact = obligations.get("redact", []) if isinstance(obligations, dict) else None
    zones = obligations.get("redact_zones", ["cloud"]) if isinstance(obligations, dict) else None
    if not isinstance(redact, list) or not isinstance(zones, list):
        raise PolicyError("policy decision: obligations.redact and redact_zones must be lists")
    floor = raw.get("capability_floor", 0)
    if not isinstance(floor, int | float):
        raise PolicyError("policy decision: capability_floor must be a number")
    return PolicyDecision(
        allowed=sorted(allowed),
        denied={
            str(k): [str(r) for r in (v if isinstance(v, list) else [v])] for k, v in denied.items()
        },
        redact=sorted(str(t) for t in redact),
        redact_zones=[str(z) for z in zones],
        capability_floor=int(floor),
        revision=revision,
    )


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read: {exc}") from None


def _read_data(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: data.json must hold an object")
    return data


def _regorus_message(exc: BaseException) -> str:
    """regorus messages carry a rendered source location and a Rust backtrace; keep the first."""
    text = str(exc).split("Stack backtrace:")[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    location = next((ln.split("-->", 1)[1].strip() for ln in lines if "-->" in ln), "")
    error = next((ln.strip() for ln in lines if ln.strip().startswith("error:")), "")
    if location:
        return f"{location}: {error.removeprefix('error:').strip() or text}"
    return " ".join(lines) or type(exc).__name__
