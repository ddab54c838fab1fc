"""The dense passes' probes on tiny models: the estimated top-p count with unquantised keys is the
oracle's, quantised keys move it, and each query's loss curve is the mass (or output error)
outside the keys every arm keeps, 0 once every visible key is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_matrix import CTX, save_tiny_model

from spectra_interp.budget import allocate as al
from spectra_interp.budget import arms, mask
from spectra_interp.budget.probes import (
    MASS,
    OUTPUT,
    EstimatedTopP,
    LossCurves,
    mass_outside,
    quantised,
)
from spectra_interp.models import load_model

SINK, LOCAL = 1, 2
MASSES = (0.5, 0.8, 0.9, 0.99)


@pytest.fixture(scope="module", params=("llama", "gemma2"))
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"budget-probes-{request.param}")
    return load_model(str(save_tiny_model(request.param, root)), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, CTX), generator=torch.Generator().manual_seed(7))


def test_estimated_top_p_with_unquantised_keys_is_the_oracle(model, tokens):
    run = mask.mask_state(model, SINK, LOCAL, masses=MASSES, probe=EstimatedTopP(MASSES, None))
    mask.forward(model, tokens, run, logits=False)
    oracle, estimated = run.stacked("by_mass"), run.probed_stack("estimated")
    assert torch.equal(oracle, estimated)
    quant = mask.mask_state(model, SINK, LOCAL, masses=MASSES, probe=EstimatedTopP(MASSES, 2))
    mask.forward(model, tokens, quant, logits=False)
    assert not torch.equal(oracle, quant.probed_stack("estimated"))  # 2 bits do move counts


def test_quantised_keys_take_at_most_the_levels_asked_per_channel():
    keys = torch.randn(1, 3, 40, 8, generator=torch.Generator().manual_seed(0))
    q = quantised(keys, 4)
    for c in range(8):
        assert len(torch.unique(q[..., c])) <= 16
    assert (q - keys).abs().max() <= (keys.amax((1, 2)) - keys.amin((1, 2))).max() / 30 + 1e-6
    assert torch.allclose(quantised(keys, 16), keys, atol=1e-3)


@pytest.mark.parametrize("loss", [MASS, OUTPUT])
def test_loss_curves_fall_to_zero_at_every_key(model, tokens, loss):
    spec = model.spectra_spec
    visible = spec.keys_seen(CTX)
    fewest = arms.fewest_keys(visible, SINK, LOCAL)
    n = visible.numpy()[:, None, :]
    u = np.random.default_rng(0).random((2, spec.n_layers, spec.n_heads, CTX))
    grid = np.stack(
        [al.kept_counts(np.asarray(f), n, fewest.numpy()[:, None, :], u) for f in al.FRACTIONS], -1
    )
    run = mask.mask_state(model, SINK, LOCAL, probe=LossCurves(torch.from_numpy(grid), loss))
    mask.forward(model, tokens, run, logits=False)
    curves = run.probed_stack("loss").float()
    assert curves.shape == (2, spec.n_layers, spec.n_heads, CTX, len(al.FRACTIONS))
    assert (curves[..., -1].abs() < 2e-3).all()  # every key kept: nothing lost (float16)
    assert (curves >= 0).all()
    if loss == MASS:
        assert (curves[..., 1:] <= curves[..., :-1] + 1e-3).all()  # more keys, less mass lost
        entropy = run.probed_stack("entropy")
        assert (entropy >= -1e-6).all() and (
            entropy <= torch.log(visible.double())[None, :, None] + 1e-4
        ).all()


def test_mass_outside_counts_the_always_kept_keys_first():
    probs = torch.tensor([[[[0.1, 0.6, 0.3]]]])
    order = torch.tensor([[[[0, 1, 2]]]])  # key 0 always kept, then by score
    counts = torch.tensor([[[[1, 2, 3]]]])
    assert torch.allclose(mass_outside(probs, order, counts), torch.tensor([[[[0.9, 0.3, 0.0]]]]))
