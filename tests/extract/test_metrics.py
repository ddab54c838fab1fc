"""Metric unit tests: known entropies, fp32 output for fp16 input, causal masking; the fast
extras against their first implementation."""

import math

import pytest
import torch

from spectra_interp.config import Q_SCALES
from spectra_interp.extract.extras import SampleRequest, layer_extras, sampled_logits
from spectra_interp.metrics import (
    HIDDEN,
    MASS_SLACK,
    attention_entropy,
    capped,
    keys_for_mass,
    keys_seen,
    max_entropy,
    query_extras,
    query_norm,
    visible_keys,
)


def causal_uniform(n: int) -> torch.Tensor:
    """[1, 1, n, n] pattern where query t attends uniformly to its t + 1 keys."""
    mask = torch.tril(torch.ones(n, n))
    return (mask / mask.sum(-1, keepdim=True))[None, None]


def test_uniform_attention_gives_log_of_keys_seen():
    n = 37
    entropy = attention_entropy(causal_uniform(n), block=8)[0, 0]
    expected = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
    torch.testing.assert_close(entropy, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(max_entropy(keys_seen(n)), expected)


def test_one_hot_attention_gives_zero():
    pattern = torch.zeros(2, 3, 10, 10)
    pattern[..., 0] = 1.0
    assert attention_entropy(pattern).abs().max().item() == 0.0


def test_fp16_pattern_gives_finite_fp32_entropy():
    torch.manual_seed(0)
    scores = torch.randn(1, 4, 300, 300) * 8
    scores = scores.masked_fill(torch.triu(torch.ones(300, 300, dtype=torch.bool), 1), -torch.inf)
    pattern16 = scores.softmax(-1).half()
    entropy = attention_entropy(pattern16)
    assert entropy.dtype == torch.float32
    assert torch.isfinite(entropy).all()
    reference = -(torch.xlogy(pattern16.float(), pattern16.float())).sum(-1)
    torch.testing.assert_close(entropy, reference, atol=1e-4, rtol=0)


def test_future_keys_contribute_nothing():
    """Junk above the diagonal is never read: the blocked computation only sees visible keys."""
    pattern = causal_uniform(64)
    corrupted = pattern + torch.triu(torch.full((64, 64), 5.0), 1)
    torch.testing.assert_close(
        attention_entropy(corrupted, block=1), attention_entropy(pattern, block=1)
    )


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_blocking_does_not_change_the_result(block):
    torch.manual_seed(1)
    scores = torch.randn(2, 3, 50, 50)
    scores = scores.masked_fill(torch.triu(torch.ones(50, 50, dtype=torch.bool), 1), -torch.inf)
    pattern = scores.softmax(-1)
    reference = -(torch.xlogy(pattern, pattern)).sum(-1)
    torch.testing.assert_close(attention_entropy(pattern, block=block), reference)


def test_query_norm_shape_and_value():
    q = torch.zeros(2, 5, 3, 4)
    q[1, 2, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norms = query_norm(q.half())
    assert norms.shape == (2, 3, 5) and norms.dtype == torch.float32
    assert norms[1, 0, 2].item() == 5.0 and norms.sum().item() == 5.0


def test_sliding_window_caps_keys_seen():
    assert keys_seen(6, sliding_window=4).tolist() == [1, 2, 3, 4, 4, 4]
    assert math.isclose(max_entropy(keys_seen(3))[-1].item(), math.log(3), rel_tol=1e-6)


def reference_query_extras(logits, allowed, *, softcap, scales, mass):
    """The extras as first written (issue 24's reference): softmax and special.entr over the full
    rows for each scale, k_eff from a full sort (exact running sums)."""
    z = logits.float()
    hidden = ~allowed

    def entropy_of(s):
        return torch.special.entr(torch.softmax(s.masked_fill(hidden, float("-inf")), -1)).sum(-1)

    scaled = torch.stack([entropy_of(capped(alpha * z, softcap)) for alpha in scales], dim=-1)
    s = capped(z, softcap).masked_fill(hidden, 0.0)
    p = torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1)
    ds = z.masked_fill(hidden, 0.0) * (1 - torch.tanh(z / softcap) ** 2) if softcap else s
    mean_s, mean_ds = (p * s).sum(-1, keepdim=True), (p * ds).sum(-1, keepdim=True)
    top = torch.sort(p.double(), dim=-1, descending=True).values.cumsum(-1)
    return {
        "max_attn": p.max(dim=-1).values,
        "k_eff": (top < mass - MASS_SLACK).sum(-1) + 1,
        "scaled_entropy": scaled,
        "gain": -(p * (s - mean_s) * (ds - mean_ds)).sum(-1),
    }


def _assert_extras_match(got, want, scale):
    assert torch.equal(got["k_eff"], want["k_eff"])
    for name in ("max_attn", "scaled_entropy"):
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-5, msg=name)
    # the gain is a variance of logits: its rounding grows with their square
    torch.testing.assert_close(got["gain"], want["gain"], atol=1e-5 * scale**2, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("window", [None, 37])
def test_query_extras_equal_the_reference(dtype, scale, softcap, window):
    g = torch.Generator().manual_seed(8)
    positions = torch.randint(0, 300, (2, 40), generator=g)
    logits = (torch.randn(2, 3, 40, 300, generator=g) * scale).to(dtype)
    allowed = visible_keys(positions, 300, window)[:, None]
    kwargs = {"softcap": softcap, "scales": Q_SCALES, "mass": 0.9}
    got = query_extras(logits, allowed, **kwargs)
    want = reference_query_extras(logits, allowed, **kwargs)
    _assert_extras_match(got, want, scale)
    assert (got["scaled_entropy"] >= 0).all()


@pytest.mark.parametrize("mass", [0.5, 0.9, 0.999, 1.0])
def test_keys_for_mass_equals_a_full_sort(mass):
    """The histogram-and-one-bin count equals a full sort's with exact (float64) running sums, on
    peaked, flat and far-spread rows, with hidden keys, given log weights or not."""
    g = torch.Generator().manual_seed(9)
    for temperature in (0.02, 0.1, 1.0, 10.0, 1000.0):
        s = torch.randn(64, 600, generator=g) / temperature
        s[:8, 300:] = HIDDEN  # keys these queries cannot see
        s[8:16] = s[8:16].round()  # ties: many keys of equal weight
        p = torch.softmax(s, dim=-1)
        top = torch.sort(p.double(), dim=-1, descending=True).values.cumsum(-1)
        want = (top < mass - MASS_SLACK).sum(-1) + 1
        assert torch.equal(keys_for_mass(p, mass), want)
        t = s - s.amax(-1, keepdim=True)
        assert torch.equal(keys_for_mass(p, mass, t), want)


@pytest.mark.parametrize("window", [None, 50])
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_blocked_layer_extras_equal_full_rows(window, softcap):
    g = torch.Generator().manual_seed(10)
    q = torch.randn(2, 4, 200, 16, generator=g) * 2
    k = torch.randn(2, 2, 200, 16, generator=g) * 2
    positions = torch.stack([torch.randperm(200, generator=g)[:70] for _ in range(2)])
    request = SampleRequest(positions, Q_SCALES, 0.9)
    got = layer_extras(q, k, request, scale=0.25, softcap=softcap, window=window, block=16)
    logits = sampled_logits(q, k, positions, 0.25)
    allowed = visible_keys(positions, 200, window)[:, None]
    want = reference_query_extras(logits, allowed, softcap=softcap, scales=Q_SCALES, mass=0.9)
    _assert_extras_match(got, want, 2.0)
