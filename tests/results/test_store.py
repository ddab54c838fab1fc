"""The results folder: shards, claims, resume bookkeeping, clear errors."""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from spectra_interp.errors import SpectraError
from spectra_interp.results import store
from spectra_interp.results.layout import SweepLayout


def test_shards_round_trip_and_count_as_done(tmp_path):
    layout = SweepLayout(tmp_path)
    store.write_shard(layout, "trained", 3, stats=np.arange(4.0))
    store.write_shard(layout, "trained", 11, stats=np.ones(2))
    (layout.shard_dir("trained") / ".window_00012.npz.x.tmp").write_bytes(b"partial")
    assert layout.done_windows("trained") == {3, 11}
    assert layout.done_windows("random_init") == set()
    got = store.read_shard(layout, "trained", 3)["stats"]
    np.testing.assert_array_equal(got, np.arange(4.0))
    assert layout.relative_shard("trained", 3) == "shards/trained/window_00003.npz"


def test_too_little_disk_is_reported_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    with pytest.raises(SpectraError, match="MiB free"):
        store.check_writable(tmp_path / "out", min_free_bytes=2**30)


def test_foreign_folder_is_not_mixed_in(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SpectraError, match="not a Spectra results folder"):
        store.prepare_folder(SweepLayout(tmp_path), {"seed": 0}, overwrite=False)


def test_same_settings_resume_and_other_settings_are_named(tmp_path):
    layout = SweepLayout(tmp_path)
    store.write_json(layout.config, {"identity": {"seed": 0, "ctx": 64}})
    assert store.prepare_folder(layout, {"seed": 0, "ctx": 64}, overwrite=False) is True
    with pytest.raises(SpectraError, match="ctx: folder has 64, this run has 128"):
        store.prepare_folder(layout, {"seed": 0, "ctx": 128}, overwrite=False)


def test_overwrite_clears_what_a_run_wrote_and_keeps_the_rest(tmp_path):
    layout = SweepLayout(tmp_path / "run")
    store.write_json(layout.config, {"identity": {"seed": 99}})
    store.write_shard(layout, "trained", 0, stats=np.zeros(1))
    (layout.root / "my-notes.txt").write_text("keep")
    assert store.prepare_folder(layout, {"seed": 0}, overwrite=True) is False
    assert not (layout.root / layout.SHARDS).exists() and not layout.config.exists()
    assert (layout.root / "my-notes.txt").read_text() == "keep"


def test_a_claim_is_exclusive_while_its_process_lives(tmp_path):
    path = SweepLayout(tmp_path).claim("trained", 0)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": 0}))
        assert store.claim_owner(path)["pid"] == holder.pid
        assert store.try_claim(path) is False
        layout = SweepLayout(tmp_path)
        with pytest.raises(SpectraError, match=f"in use by another run \\(pid {holder.pid}"):
            store.prepare_folder(layout, {}, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert store.claim_owner(path) is None  # its process is gone: the claim is stale
    assert store.try_claim(path) is True
    assert json.loads(path.read_text())["pid"] == os.getpid()
    store.release_claim(path)
    assert not path.exists()


def test_a_claim_from_another_host_goes_stale_with_age(tmp_path, monkeypatch):
    path = SweepLayout(tmp_path).claim("trained", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 1e9}))
    monkeypatch.setattr(store, "CLAIM_STALE_S", 1e12)
    assert store.try_claim(path) is False
    monkeypatch.setattr(store, "CLAIM_STALE_S", 60.0)
    assert store.try_claim(path) is True
