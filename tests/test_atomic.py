"""Atomic files and folders: whole or not at all."""

import errno
import os

import pytest

from spectra_interp import atomic
from spectra_interp.errors import SpectraError


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "head_stats.csv"
    target.write_text("old,complete\n")

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SpectraError, match="disk is full"):
        atomic.write_bytes_atomic(target, b"new")
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["head_stats.csv"]


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed half way")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic.atomic_folder(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}"
