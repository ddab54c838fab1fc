"""The notebooks run top to bottom on the offline default (a small run) and are stored clean."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_query_norm_vs_entropy.ipynb", "02_head_explorer.ipynb"]
SMALL_RUN = {"SPECTRA_NB_CTX": "128", "SPECTRA_NB_WINDOWS": "4", "SPECTRA_NB_DEVICE": "cpu"}


def _text(nb: nbformat.NotebookNode) -> str:
    """Everything the executed cells printed or displayed as text or HTML."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """One results folder shared by both notebooks (the second resumes the first's run)."""
    return tmp_path_factory.mktemp("notebook-results") / "run"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has code cells"
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata


def _execute(name: str, results_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    for key, value in {**SMALL_RUN, "SPECTRA_NB_OUT": str(results_dir)}.items():
        monkeypatch.setenv(key, value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


@pytest.mark.slow
def test_story_notebook_runs_the_sweep_and_tells_the_verdict(results_dir, monkeypatch):
    nb = _execute(NAMES[0], results_dir, monkeypatch)
    text = _text(nb)
    assert "Heads: 270" in text
    assert "Verdict:" in text
    assert "CircuitsVis.AttentionPattern" in text
    assert (results_dir / "report.html").is_file()
    assert (results_dir / "head_stats.csv").is_file()


@pytest.mark.slow
def test_explorer_notebook_redraws_for_a_new_pick(results_dir, monkeypatch):
    nb = _execute(NAMES[1], results_dir, monkeypatch)
    text = _text(nb)
    assert "now showing (29, 8)" in text
    assert "'n_layers': 30" in text
