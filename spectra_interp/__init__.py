"""Spectra: does the L2 norm of a query vector predict the entropy of its attention?"""

__version__ = "0.1.0"
