"""The version of the pdcr_ext distribution, in one place: pyproject.toml reads it from here
(dynamic version), pdcr_ext.__version__ and pdcr_seg.__version__ import it."""

__version__ = "0.1.0"
