"""A memory bound for tensors a network keeps from one pass over a group for a later one."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class KeptBytes:
    """Admits tensors while their bytes, with those admitted before, stay within ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def admit(self, tensors: Iterable[torch.Tensor]) -> bool:
        """True (and counted) when ``tensors`` fit in what is left; False: the caller computes them again."""
        size = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
        if self.used + size > self.limit:
            return False
        self.used += size
        return True
