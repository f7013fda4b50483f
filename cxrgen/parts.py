"""Commit markers and atomic writes of the run directory; defined in :mod:`cxrgen.runstore`."""

from .runstore import atomic_write, marker_path, read_marker, write_marker

__all__ = ["atomic_write", "marker_path", "read_marker", "write_marker"]
