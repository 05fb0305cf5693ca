"""The analysts' notebooks run end to end on small data, and are committed without outputs."""

import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "fairuse-notebook-tests"

pytestmark = pytest.mark.slow


@pytest.fixture
def notebook_environment(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, small data settings and scratch folders for the outputs."""
    prefix = tmp_path / "jupyter"
    install(prefix=str(prefix), kernel_name=KERNEL, display_name="fairuse tests")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("FAIRUSE_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("FAIRUSE_NOTEBOOK_KEYS", "60")
    monkeypatch.setenv("FAIRUSE_NOTEBOOK_DAYS", "3")
    monkeypatch.setenv("FAIRUSE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("FAIRUSE_NOTEBOOK_DB", raising=False)
    monkeypatch.delenv("FAIRUSE_NOTEBOOK_EVENTS", raising=False)
    monkeypatch.delenv("FAIRUSE_NOTEBOOK_LABELS", raising=False)
    return tmp_path


def _run(name: str, folder: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    return notebook


def test_kernel_uses_this_interpreter(notebook_environment):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable


def test_explore_notebook_runs(notebook_environment):
    notebook = _run("01_explore_flags.ipynb", notebook_environment)

    out = notebook_environment / "out"
    assert (out / "finding_scores.png").stat().st_size > 0
    assert (out / "anomaly_scores.png").stat().st_size > 0
    assert not any(output.get("output_type") == "error" for cell in notebook.cells for output in cell.get("outputs", []))


def test_retrain_notebook_registers_candidate(notebook_environment):
    _run("02_retrain.ipynb", notebook_environment)

    out = notebook_environment / "out"
    candidates = sorted((notebook_environment / "models").glob("iforest-notebook-*.json"))
    assert len(candidates) == 1
    assert (out / "retrain_curves.png").stat().st_size > 0

    from detector.store import open_store
    from detector.store.model_assignments import SHADOW, ModelAssignments

    shadow = ModelAssignments(open_store(f"sqlite:///{out / 'retrain.db'}").engine).current(SHADOW)
    assert shadow.version == candidates[0].stem.removeprefix("iforest-")


def test_retrain_notebook_without_labels_skips_curves(notebook_environment, monkeypatch):
    from detector.simulate import simulate_traffic

    simulation = simulate_traffic(notebook_environment / "own", keys=60, days=3, seed=5)
    monkeypatch.setenv("FAIRUSE_NOTEBOOK_DB", f"sqlite:///{notebook_environment / 'own.db'}")
    monkeypatch.setenv("FAIRUSE_NOTEBOOK_EVENTS", str(simulation.events_path))

    notebook = _run("02_retrain.ipynb", notebook_environment)

    printed = [output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])]
    assert any(text.startswith("No curves: they need labels") for text in printed)
    assert not (notebook_environment / "out" / "retrain_curves.png").exists()
    assert len(list((notebook_environment / "models").glob("iforest-notebook-*.json"))) == 1


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name)
def test_committed_notebook_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]

    assert code_cells
    assert [cell.outputs for cell in code_cells if cell.outputs] == []
    assert [cell.execution_count for cell in code_cells if cell.execution_count is not None] == []
