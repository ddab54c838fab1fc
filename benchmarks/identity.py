"""Are two result tables the same? Every numeric column's largest absolute difference, NaN where
one table has NaN and the other not, and the non-numeric columns compared exactly.

    python benchmarks/identity.py BEFORE.csv AFTER.csv [--tol 1e-12]

Exit code 0 when every numeric column agrees within `--tol` (and NaN in the same places) and
every other column is equal; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd


def column_differences(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per column: kind, the largest |before - after| over rows, rows whose NaN differs,
    rows whose non-numeric value differs."""
    if list(before.columns) != list(after.columns) or len(before) != len(after):
        raise SystemExit(
            f"the tables differ in shape: {before.shape} {list(before.columns)} against "
            f"{after.shape} {list(after.columns)}"
        )
    rows = []
    for name in before.columns:
        a, b = before[name], after[name]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
            nan_differs = int((np.isnan(x) != np.isnan(y)).sum())
            both = ~np.isnan(x) & ~np.isnan(y)
            diff = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
            rows.append((name, "numeric", diff, nan_differs, 0))
        else:
            rows.append((name, "other", np.nan, 0, int((a.astype(str) != b.astype(str)).sum())))
    return pd.DataFrame(
        rows, columns=["column", "kind", "max_abs_diff", "nan_differs", "values_differ"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--tol", type=float, default=1e-12)
    args = parser.parse_args(argv)
    table = column_differences(pd.read_csv(args.before), pd.read_csv(args.after))
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(table.to_string(index=False))
    numeric = table[table["kind"] == "numeric"]
    same = (
        (numeric["max_abs_diff"] <= args.tol).all()
        and (table["nan_differs"] == 0).all()
        and (table["values_differ"] == 0).all()
    )
    print(
        f"{len(numeric)} numeric columns, largest difference "
        f"{numeric['max_abs_diff'].max():.3g} (tolerance {args.tol:g}): "
        f"{'IDENTICAL' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
