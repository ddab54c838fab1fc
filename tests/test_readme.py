"""The README's generated tables are the code's own: settings, results files, columns."""

from pathlib import Path

from spectra_interp import settings
from spectra_interp.budget.curves import CURVE_COLUMNS, PER_HEAD_COLUMNS
from spectra_interp.config import BudgetConfig, SweepConfig
from spectra_interp.results.layout import BudgetLayout, SweepLayout
from spectra_interp.settings import columns_markdown
from spectra_interp.stats.columns import HEAD_COLUMNS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_readme_starts_with_the_two_commands():
    head = README.split("## ", 1)[0]
    assert "bash scripts/setup.sh && .venv/bin/python scripts/sweep_heads.py" in head
    assert "bash scripts/setup.sh --dev && .venv/bin/python -m pytest" in head
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh --dev && .venv/bin/python -m pytest" in ci


def test_the_settings_tables_are_generated_from_the_config():
    assert settings.markdown_table(SweepConfig) in README
    assert settings.markdown_table(BudgetConfig) in README


def test_the_results_folder_and_column_tables_are_the_code_s():
    assert SweepLayout.files_markdown() in README
    assert BudgetLayout.files_markdown() in README
    assert columns_markdown(HEAD_COLUMNS) in README
    assert columns_markdown(CURVE_COLUMNS) in README
    assert columns_markdown(PER_HEAD_COLUMNS) in README
