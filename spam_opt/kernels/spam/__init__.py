"""SPAM's kernels: ``reference`` (single tensor), ``foreach``, ``compiled`` (torch.compile), ``cpp`` (C++)."""
