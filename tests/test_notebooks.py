"""The notebooks run top to bottom, offline, on the real models; what is committed is stripped.

Each notebook is executed by nbclient in a fresh kernel of this interpreter, with the working
directory the notebooks folder (as when a reader opens them). Any cell error fails the test with
the cell and its traceback; the notebooks carry their own asserts on what they demonstrate (no PII
in the decision log, the hot-reloaded rule changing the decision, ...). The kernel gets no route
out: HTTP(S) proxies point at a closed loopback port, so a library reaching for the network fails
instead of silently downloading; the loopback servers the notebooks start are exempt (NO_PROXY).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("0*.ipynb"))
CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused
MAX_COMMITTED_BYTES = 64_000


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notebooks_build", FOLDER / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_notebooks_are_committed_as_build_py_writes_them() -> None:
    assert [p.name for p in NOTEBOOKS] == list(load_build().NOTEBOOKS)
    assert load_build().main(["--check"]) == 0, "run: .venv/bin/python notebooks/build.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert path.stat().st_size < MAX_COMMITTED_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_offline(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, CLOSED_PORT)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a shared 2-core machine
    monkeypatch.delenv("LOCUS_CONFIG", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(FOLDER)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(
        o.get("text", "") if o.output_type == "stream" else json.dumps(o.get("data", {}))
        for o in outputs
    )
    assert "Traceback" not in text
    if path.stem == "04_benchmarks":  # the three figures are drawn, inline
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) == 3
