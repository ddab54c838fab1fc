"""The notebooks: stored with the outputs of a real run (small enough to read anywhere), and
run top to bottom on a short sweep of the offline default."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_query_norm_vs_entropy.ipynb", "02_head_explorer.ipynb"]
# A short sweep, figures as plotly JSON only: the PNG beside each (kaleido driving a browser)
# is what the stored notebooks carry, checked above.
SMALL_RUN = {
    "SPECTRA_NB_CTX": "128",
    "SPECTRA_NB_WINDOWS": "4",
    "SPECTRA_NB_DEVICE": "cpu",
    "SPECTRA_NB_RENDERER": "plotly_mimetype",
}
MAX_BYTES = 2 * 1024 * 1024


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


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


@pytest.mark.parametrize(("name", "min_images"), [(NAMES[0], 12), (NAMES[1], 3)])
def test_notebook_is_stored_with_the_outputs_of_a_real_run(name, min_images):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size / 1e6:.1f} MB"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "run top to bottom"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert _images(nb) >= min_images  # figures a reader sees without running anything
    assert "widgets" not in nb.metadata
    assert "No finished run" not in _text(nb)  # the stored outputs are the default run's


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """One results folder shared by both notebooks (the second reads the first's run)."""
    return tmp_path_factory.mktemp("notebook-results") / "run"


def _execute(name: str, results_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    for key, value in {**SMALL_RUN, "SPECTRA_NB_RESULTS": str(results_dir)}.items():
        monkeypatch.setenv(key, value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


@pytest.mark.slow
def test_story_notebook_runs_a_short_sweep_when_the_default_run_is_missing(
    results_dir, monkeypatch
):
    nb = _execute(NAMES[0], results_dir, monkeypatch)
    text = _text(nb)
    assert "No finished run" in text and "a short sweep (4 windows of 128 tokens)" in text
    assert text.count("Verdict:") == 1
    assert "Heads: 270" in text and "Beyond r:" in text
    assert "- Success criteria of the original plan:" in text
    assert (results_dir / "report.html").is_file()
    figures = [o for c in nb.cells for o in c.get("outputs", []) if "data" in o]
    assert sum("application/vnd.plotly.v1+json" in o["data"] for o in figures) >= 12


@pytest.mark.slow
def test_explorer_notebook_redraws_for_a_new_pick(results_dir, monkeypatch):
    nb = _execute(NAMES[1], results_dir, monkeypatch)
    text = _text(nb)
    assert "now showing (29, 8, 'random_init')" in text
    # A pick redraws the explorer's views in place (a plotly figure must not display anew).
    explorer = next(c for c in nb.cells if "def redraw_head" in c.source)
    shown = [o for o in explorer.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == 3
    assert "L29 H8" in json.dumps(shown[0]["data"]["application/vnd.plotly.v1+json"])
    pick = next(c for c in nb.cells if "now showing" in c.source)
    assert not [o for o in pick.outputs if o["output_type"] == "display_data"]
    assert "'n_layers': 30" in text
    assert "Phase 2" in json.dumps(nb.cells[-2].source) or "budget" in text
