"""Provenance of a results folder: the windows, the command that reruns it, the files and their
hashes, as the report shows them."""

import hashlib
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from fake_results import make_fake_results

from spectra_interp.config import SweepConfig
from spectra_interp.settings import flat_values
from spectra_interp.viz import provenance, report


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_fake_results(tmp_path_factory.mktemp("small"), 3, 2)


def test_reproduce_command_keeps_only_what_differs_from_the_defaults():
    settings = {**flat_values(SweepConfig()), "ctx": 256, "pack": True, "out": "/x", "seed": 3}
    command = provenance.reproduce_command({"config": settings})
    assert command == "python scripts/sweep_heads.py --ctx 256 --pack --seed 3"
    assert provenance.reproduce_command({}) is None


def test_provenance_names_windows_command_files_and_hashes(small):
    page = report.build_report(small).read_text(encoding="utf-8")
    meta = pd.read_csv(small / "windows" / "meta.csv")
    windows = re.search(r'<table class="grid" id="windows-table">.*?</table>', page, re.S).group(0)
    assert windows.count("<tr>") == len(meta) + 1
    assert all(f"<td>{doc}</td>" in windows for doc in meta["doc_id"])
    config = json.loads((small / "config.json").read_text())
    command = provenance.reproduce_command(config)
    defaults = flat_values(SweepConfig())
    for key in ("model", "ctx", "max_windows", "sample_per_window", "n_boot"):
        value = config["config"][key]
        flag = "--" + key.replace("_", "-")
        assert (f"{flag} {value}" in command) == (value != defaults[key]), key
    assert "--out" not in command and html.escape(command) in page
    for name in ("head_stats.csv", "summary.json", "config.json", "windows/tokens.npy"):
        digest = hashlib.sha256((small / name).read_bytes()).hexdigest()
        assert f'href="{name}"' in page and digest in page, name
    env = config["environment"]
    assert env["git_commit"] in page
