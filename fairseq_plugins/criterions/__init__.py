"""Criterions of the user-dir, one module each."""
from . import encouraging_ls  # noqa: F401
