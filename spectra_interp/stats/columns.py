"""Every column of head_stats.csv with its one-line meaning: the glossary the report's tooltips
and the README's column table are made from, and the order `head_table` writes."""

from __future__ import annotations

from spectra_interp.stats.inference import CI_LEVEL

CI = f"{CI_LEVEL:.0%}"

HEAD_COLUMNS: dict[str, str] = {
    "layer": "layer index (0 is the first block)",
    "head": "query head index within the layer (statistics are per query head, never per KV head)",
    "n_tokens": "tokens pooled over all windows (positions from --skip-first on)",
    "n_windows": "windows that contributed tokens",
    "cluster_unit": "the unit of the jackknife and bootstrap: document (8 or more) or window",
    "n_clusters": "how many clusters (documents or windows) the inference resampled",
    "degenerate": "why the head's statistics are undefined: constant ‖q‖ and/or constant H "
    "(relative spread at rounding level, see README: Degenerate heads); empty: measured",
    "pearson_r": "Pearson r(‖q‖, H) over all pooled tokens; H1 predicts r < 0",
    "pearson_r_log": "Pearson r(log‖q‖, H)",
    "spearman_rho": "Spearman ρ(‖q‖, H) on the token sample",
    "partial_r_position": "r(‖q‖, H) with log(keys seen) regressed out of both (position control)",
    "pearson_r_norm_entropy": "r(‖q‖, H / log(keys seen)): entropy relative to its ceiling",
    "ci_low": f"lower end of the {CI} cluster-bootstrap interval of pearson_r",
    "ci_high": f"upper end of the {CI} cluster-bootstrap interval of pearson_r",
    "p_naive": "p of r = 0 treating tokens as independent (far too small; for comparison only)",
    "p_jackknife": "two-sided p of r = 0: delete-one-cluster jackknife on Fisher z, t on C-1 df",
    "se_fisher_z": "jackknife standard error of atanh(pearson_r)",
    "q_fdr": "Benjamini-Hochberg q-value of p_jackknife across all heads",
    "perm_r": "r with ‖q‖ permuted within each window (randomization control; keeps window means)",
    "within_window_r": "r(‖q‖, H) after removing each window's means",
    "perm_r_within": "perm_r after removing each window's means (expectation exactly 0)",
    "random_init_r": "pearson_r of the same architecture with random weights (control)",
    "passes": "the pass rule holds: |pearson_r| >= r_threshold and q_fdr < fdr",
    "sign": "sign of pearson_r: negative (H1's direction), positive or none",
    "mean_qnorm": "mean ‖q‖ over the pooled tokens",
    "mean_entropy": "mean H (nats) over the pooled tokens",
    "r_max_attn": "r(‖q‖, largest attention weight) on the token sample",
    "r_log_keff": "r(log‖q‖, log k_eff) on the token sample (k_eff: fewest keys with --keff-mass)",
    "auroc_low_entropy": "how well a larger ‖q‖ ranks below-median-H queries first (0.5: no skill)",
    "delta_r2": "share of var(H) log‖q‖ adds to log(keys seen) + window means, signed by slope",
    "delta_r2_ci_low": f"lower end of the {CI} cluster-bootstrap interval of delta_r2",
    "delta_r2_ci_high": f"upper end of the {CI} cluster-bootstrap interval of delta_r2",
    "slope_obs": "within-window slope dH/dlog‖q‖ given log(keys seen), nats, on the token sample",
    "gain_entropy": "mean dH/dlog(alpha) at alpha = 1 of the same queries: rescaling alone",
    "temperature_share": "slope_obs / gain_entropy: ~1 when rescaling explains the slope",
}
