"""Count the operators that make a CUDA program wait for the GPU, on any device (the CPU included).

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` raises at the first synchronising call
(``.item()``, ``nonzero``, boolean indexing, a blocking device-to-host copy). The same operators
can be found on the CPU, where there is no GPU to wait for: :class:`HostSyncOps` is a
``TorchDispatchMode`` that records every call of an ATen operator whose CUDA kernel must read a
device value on the host before it can return:

- ``_local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``, ``if t:``);
- ``is_nonzero``, ``equal``: a host bool of device data;
- ``nonzero``, ``masked_select``, boolean ``index`` / ``index_put``, ``unique``,
  ``repeat_interleave`` without ``output_size``: the output size depends on the data.

This lets CI (no GPU) hold the line that a stage stays on the device; the ``cuda`` tests
(``tests/test_cuda.py``) check the same with the real debug mode on a GPU.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

#: operators that always read device data on the host
SYNCING = frozenset(
    {
        _aten._local_scalar_dense.default,
        _aten.is_nonzero.default,
        _aten.equal.default,
        _aten.nonzero.default,
        _aten.masked_select.default,
        _aten._unique2.default,
        _aten.unique_consecutive.default,
        _aten.unique_dim.default,
    }
)


def _bool_index(indices) -> bool:
    return any(i is not None and i.dtype == torch.bool for i in indices)


class HostSyncOps(TorchDispatchMode):
    """``with HostSyncOps() as probe: ...``; then ``probe.counts`` maps operator name -> calls."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING:
            self.counts[str(func.overloadpacket.__name__)] += 1
        elif func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
            if _bool_index(args[1]):
                self.counts[f"{func.overloadpacket.__name__}(bool mask)"] += 1
        elif func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.counts["repeat_interleave(no output_size)"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
