"""Seeing the heads: plotly figures, circuitsvis views and the self-contained report.html."""
