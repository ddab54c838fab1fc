"""The token sample: reproducible, shared by every head, as long rows."""

import numpy as np
import pytest
from synthetic import causal_keys, sample_of, simulate

from spectra_interp.errors import SpectraError
from spectra_interp.stats.sample import sample_frame


def test_token_sample_reproducible_and_shared_across_heads():
    ((q, h),) = simulate(1, 100, 2, 3, seed=15)
    nk = causal_keys(100)
    a = sample_of(q, h, nk, skip_first=5, k=10, seed=(0, 3))
    b = sample_of(q, h, nk, skip_first=5, k=10, seed=(0, 3))
    c = sample_of(q, h, nk, skip_first=5, k=10, seed=(0, 4))
    np.testing.assert_array_equal(a["pos"], b["pos"])
    assert not np.array_equal(a["pos"], c["pos"])
    assert a["pos"].min() >= 5 and np.all(np.diff(a["pos"]) > 0)
    np.testing.assert_array_equal(a["n_keys"], np.broadcast_to(a["pos"] + 1, (2, 10)))
    np.testing.assert_allclose(a["qnorm"], q[..., a["pos"]].astype(np.float32))
    np.testing.assert_allclose(a["entropy"], h[..., a["pos"]].astype(np.float32))
    assert a["qnorm"].shape == (2, 3, 10) and a["qnorm"].dtype == np.float32
    everything = sample_of(q, h, nk, skip_first=95, k=10, seed=0)
    np.testing.assert_array_equal(everything["pos"], np.arange(95, 100))
    frame = sample_frame(a, window_id=7, model="random_init")
    assert list(frame.columns) == [
        "model",
        "window_id",
        "layer",
        "head",
        "pos",
        "n_keys",
        "qnorm",
        "entropy",
    ]
    assert len(frame) == 60 and (frame["window_id"] == 7).all()
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2)].iloc[4]
    assert row["pos"] == a["pos"][4] and row["qnorm"] == a["qnorm"][1, 2, 4]
    with pytest.raises(SpectraError, match="k >= 1"):
        sample_of(q, h, nk, skip_first=1, k=0, seed=0)
