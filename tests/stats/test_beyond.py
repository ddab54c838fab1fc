"""Beyond r: each new statistic against a direct computation on synthetic attention with a
known answer, and document clustering against a planted between-document effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from synthetic import causal_keys, simulate, stack

from spectra_interp.metrics import keys_for_mass, query_extras, visible_keys
from spectra_interp.stats.beyond import (
    SampleArrays,
    alpha_response,
    auroc_low_entropy,
    delta_r2,
    within_columns,
)
from spectra_interp.stats.clusters import MIN_DOCUMENTS, Clusters
from spectra_interp.stats.moments import Moments
from spectra_interp.stats.table import head_table

SCALES = (0.5, 2**-0.5, 1.0, 2**0.5, 2.0)
CTX, D = 96, 16


def attention_run(direction_effect: bool, n_windows: int, seed: int):
    """Windows of one layer, two heads, where each query's logits are ‖q‖ (u_t · k_j) / sqrt(D).

    Temperature: u_t is one fixed unit direction, so ‖q‖ only rescales the logits.
    Direction: u_t turns with ‖q‖ so that the logits' spread stays the same whatever ‖q‖ is:
    H does not follow ‖q‖ although rescaling alone would make it.
    """
    rng = np.random.default_rng(seed)
    stats, arrays = [], []
    for w in range(n_windows):
        keys = rng.standard_normal((CTX, D))
        norms = np.exp(rng.normal(1.0, 0.35, size=(2, CTX)))
        u = rng.standard_normal(D)
        u /= np.linalg.norm(u)
        logits = np.empty((2, CTX, CTX))
        for h in range(2):
            scale = norms[h] if not direction_effect else np.full(CTX, np.exp(1.0))
            logits[h] = scale[:, None] * (keys @ u)[None, :] / np.sqrt(D)
        z = torch.from_numpy(logits)[None].float()
        positions = torch.arange(CTX)
        allowed = visible_keys(positions, CTX, None)[None, None]
        ex = query_extras(z, allowed, softcap=None, scales=SCALES, mass=0.9)
        log_p = torch.log_softmax(z.masked_fill(~allowed, -np.inf), -1)
        entropy = -(log_p.exp() * log_p.masked_fill(~allowed, 0)).sum(-1)[0].numpy()
        qnorm, entropy = norms[None], entropy[None]
        n_keys = causal_keys(CTX)
        stats.append(Moments.of_window(qnorm, entropy, n_keys, skip_first=8, perm_seed=w).sums)
        keep = slice(8, None)
        arrays.append(
            {
                "qnorm": qnorm[..., keep],
                "entropy": entropy[..., keep],
                "n_keys": n_keys[None, keep],
                "max_attn": ex["max_attn"][0, None, :, keep].numpy(),
                "k_eff": ex["k_eff"][0, None, :, keep].numpy(),
                "gain": ex["gain"][0, None, :, keep].numpy(),
                "scaled": ex["scaled_entropy"][0, None, :, keep].numpy(),
            }
        )
    sample = SampleArrays(
        **{
            k: np.stack([a[k] for a in arrays])
            for k in ("qnorm", "entropy", "n_keys", "max_attn", "k_eff", "gain")
        },
        scaled_mean=np.stack([a["scaled"].mean(2) for a in arrays]),
    )
    return np.stack(stats), sample


def test_a_planted_temperature_effect_gives_a_temperature_share_near_1():
    stats, sample = attention_run(direction_effect=False, n_windows=6, seed=0)
    table = head_table(stats, sample_arrays=sample, n_boot=100)
    assert (table["partial_r_position"] < -0.9).all()  # H falls with ‖q‖ once position is out
    np.testing.assert_allclose(table["temperature_share"], 1.0, atol=0.05)
    assert (table["gain_entropy"] < 0).all() and (table["slope_obs"] < 0).all()
    assert (table["delta_r2_ci_high"] < 0).all()  # ‖q‖ explains H beyond position, negatively


def test_a_planted_direction_effect_does_not():
    stats, sample = attention_run(direction_effect=True, n_windows=6, seed=1)
    table = head_table(stats, sample_arrays=sample, n_boot=100)
    assert (table["gain_entropy"] < 0).all()  # rescaling alone would sharpen attention ...
    assert (table["temperature_share"].abs() < 0.05).all()  # ... but H does not follow ‖q‖
    assert (table["delta_r2"].abs() < 0.001).all()
    assert (table["auroc_low_entropy"] - 0.5).abs().max() < 0.05


def test_the_sample_statistics_equal_direct_computations():
    stats, sample = attention_run(direction_effect=False, n_windows=3, seed=2)
    table = head_table(stats, sample_arrays=sample, n_boot=50)
    for h in range(2):
        q = sample.qnorm[:, 0, h].ravel()
        entropy = sample.entropy[:, 0, h].ravel()
        row = table.iloc[h]
        assert row["r_max_attn"] == pytest.approx(
            np.corrcoef(q, sample.max_attn[:, 0, h].ravel())[0, 1], abs=1e-9
        )
        assert row["r_log_keff"] == pytest.approx(
            np.corrcoef(np.log(q), np.log(sample.k_eff[:, 0, h].ravel()))[0, 1], abs=1e-9
        )
        low = entropy < np.median(entropy)
        u = sps.mannwhitneyu(q[low], q[~low]).statistic
        assert row["auroc_low_entropy"] == pytest.approx(u / (low.sum() * (~low).sum()))
        design = [np.log(q), np.log(np.tile(sample.n_keys[0, 0], 3))]
        windows = np.repeat(np.arange(3), sample.qnorm.shape[-1])
        dummies = (windows[:, None] == np.arange(3)).astype(float)
        coef = np.linalg.lstsq(np.column_stack([*design, dummies]), entropy, rcond=None)[0]
        assert row["slope_obs"] == pytest.approx(coef[0], rel=1e-6)
        assert row["gain_entropy"] == pytest.approx(sample.gain[:, 0, h].mean(), rel=1e-5)
    assert (table["auroc_low_entropy"] > 0.55).all()  # sharper queries tend to larger ‖q‖


def test_delta_r2_equals_two_regressions_with_window_means():
    windows = simulate(5, 60, 1, 2, seed=3, beta=-0.8, sd_a=0.5, sd_b=0.5)
    s = stack(windows)
    got = delta_r2(within_columns(s).sum(0))
    for h in range(2):
        y = np.concatenate([w[1][0, h, 1:] for w in windows])
        lx = np.log(np.concatenate([w[0][0, h, 1:] for w in windows]))
        z = np.tile(np.log(np.arange(2, 61)), 5)
        dummies = (np.repeat(np.arange(5), 59)[:, None] == np.arange(5)).astype(float)

        def r2(*cols, y=y, dummies=dummies):
            x = np.column_stack([*cols, dummies])
            resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            return 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))

        coef = np.linalg.lstsq(np.column_stack([lx, z, dummies]), y, rcond=None)[0][0]
        assert got[0, h] == pytest.approx(np.sign(coef) * (r2(lx, z) - r2(z)), abs=1e-10)
        assert got[0, h] < 0  # beta < 0: larger ‖q‖, lower H


def test_a_planted_position_only_effect_gives_delta_r2_near_0():
    """‖q‖ and H both follow position and nothing else: r is large, delta R^2 is ~0."""
    rng = np.random.default_rng(4)
    z = np.log(np.arange(1, 201))
    stats = []
    for w in range(10):
        q = 10 + 3 * z + rng.normal(0, 0.3, (1, 3, 200))
        h = np.abs(0.9 * z + rng.normal(0, 0.3, (1, 3, 200)))
        stats.append(Moments.of_window(q, h, causal_keys(200), skip_first=1, perm_seed=w).sums)
    table = head_table(np.stack(stats), n_boot=200)
    assert (table["pearson_r"] > 0.8).all()
    assert (table["delta_r2"].abs() < 0.005).all()
    straddles = (table["delta_r2_ci_low"] < 0) & (table["delta_r2_ci_high"] > 0)
    assert straddles.all()  # signed, the interval is free to include 0, and does


def test_keys_for_mass_matches_a_sort():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(40, 0.3), size=200)
    p[:, 30:] = 0  # keys a query cannot see
    p /= p.sum(-1, keepdims=True)
    got = keys_for_mass(torch.from_numpy(p).float(), 0.9).numpy()
    want = [int(np.searchsorted(np.cumsum(np.sort(row)[::-1]), 0.9 - 1e-6) + 1) for row in p]
    np.testing.assert_array_equal(got, want)
    assert keys_for_mass(torch.tensor([[1.0, 0.0, 0.0]]), 1.0).item() == 1


def test_auroc_has_no_skill_on_noise_and_flips_with_the_direction():
    rng = np.random.default_rng(6)
    q = rng.normal(size=(1, 2, 2000))
    h = np.stack([rng.normal(size=2000), -q[0, 1]])[None]
    auc = auroc_low_entropy(q, h)
    assert auc[0, 0] == pytest.approx(0.5, abs=0.03) and auc[0, 1] == pytest.approx(1.0)
    assert auroc_low_entropy(q, -h)[0, 1] == pytest.approx(0.0)


def test_alpha_response_rows():
    _, sample = attention_run(direction_effect=False, n_windows=2, seed=7)
    frame = alpha_response(sample, SCALES)
    assert list(frame.columns) == ["layer", "head", "scale", "mean_entropy"]
    assert len(frame) == 2 * len(SCALES)
    one = frame[frame["scale"] == 1.0].sort_values("head")["mean_entropy"].to_numpy()
    np.testing.assert_allclose(one, sample.entropy.mean((0, 3))[0], rtol=1e-5)
    curve = frame[frame["head"] == 0]["mean_entropy"].to_numpy()
    assert (np.diff(curve) < 0).all()  # a larger query sharpens a temperature-only head


def test_document_clusters_catch_a_between_document_effect_windows_miss():
    """Windows of one document share an effect on both ‖q‖ and H (r = 0 inside every window):
    with windows as units the pooled r looks significant, with documents it does not."""
    rng = np.random.default_rng(8)
    n_docs, per_doc, n_heads = 10, 6, 40
    stats, doc_ids = [], []
    shift_q = rng.normal(0, 1.0, (n_docs, n_heads))
    shift_h = rng.normal(0, 1.0, (n_docs, n_heads))
    for d in range(n_docs):
        for w in range(per_doc):
            q = 30 + shift_q[d][None, :, None] + rng.normal(0, 0.5, (1, n_heads, 100))
            h = 8 + shift_h[d][None, :, None] + rng.normal(0, 0.5, (1, n_heads, 100))
            stats.append(Moments.of_window(q, h, causal_keys(100), skip_first=1, perm_seed=w).sums)
            doc_ids.append(f"book{d}")
    stats = np.stack(stats)
    meta = pd.DataFrame({"source": "bundled", "doc_id": doc_ids})
    by_document = Clusters.of(meta)
    assert by_document.unit == "document" and by_document.n == n_docs >= MIN_DOCUMENTS
    windows = head_table(stats, n_boot=100)
    documents = head_table(stats, clusters=by_document, n_boot=100)
    assert (windows["cluster_unit"] == "window").all() and (windows["n_clusters"] == 60).all()
    assert (documents["cluster_unit"] == "document").all()
    assert (documents["n_clusters"] == n_docs).all()
    assert (windows["p_jackknife"] < 0.05).mean() > 0.3  # windows of one book look independent
    assert (documents["p_jackknife"] < 0.05).mean() <= 0.1  # the document holds its 5% level
    few = Clusters.of(meta.assign(doc_id=[f"book{i % 3}" for i in range(60)]))
    assert few.unit == "window" and few.n == 60
