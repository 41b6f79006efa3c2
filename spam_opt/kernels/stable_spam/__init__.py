"""Stable-SPAM's kernels: ``reference`` (single tensor), ``foreach``, ``cpp`` (C++)."""
