"""The results folder: atomic writes, resume bookkeeping, clear errors for bad folders."""

import errno
import os
from types import SimpleNamespace

import numpy as np
import pytest

from spectra_interp import store
from spectra_interp.errors import SpectraError


def test_shards_round_trip_and_count_as_done(tmp_path):
    store.write_shard(tmp_path, "trained", 3, stats=np.arange(4.0))
    store.write_shard(tmp_path, "trained", 11, stats=np.ones(2))
    assert store.done_windows(tmp_path, "trained") == {3, 11}
    assert store.done_windows(tmp_path, "random_init") == set()
    np.testing.assert_array_equal(store.read_shard(tmp_path, "trained", 3)["stats"], np.arange(4.0))


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "head_stats.csv"
    target.write_text("old,complete\n")

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SpectraError, match="disk is full"):
        store.write_bytes_atomic(target, b"new")
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["head_stats.csv"]


def test_too_little_disk_is_reported_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    with pytest.raises(SpectraError, match="MiB free"):
        store.check_writable(tmp_path / "out", min_free_bytes=2**30)


def test_foreign_folder_is_not_mixed_in(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SpectraError, match="not a Spectra results folder"):
        store.prepare_folder(tmp_path, {"seed": 0}, overwrite=False)


def test_same_settings_resume_and_other_settings_are_named(tmp_path):
    store.write_json(tmp_path / "config.json", {"identity": {"seed": 0, "ctx": 64}})
    assert store.prepare_folder(tmp_path, {"seed": 0, "ctx": 64}, overwrite=False) is True
    with pytest.raises(SpectraError, match="ctx: folder has 64, this run has 128"):
        store.prepare_folder(tmp_path, {"seed": 0, "ctx": 128}, overwrite=False)
