"""Metric unit tests: known entropies, fp32 output for fp16 input, causal masking."""

import math

import pytest
import torch

from spectra_interp.metrics import attention_entropy, keys_seen, max_entropy, query_norm


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
