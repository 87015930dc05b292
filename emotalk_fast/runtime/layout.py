"""Where the linear layers' weights lie in memory on a CPU: column-major ([out, in] viewed over an
[in, out] buffer), because torch's CPU GEMM reads such a weight faster when a product has few
rows (a live hop's new rows) and no slower with many (docs/performance.md). The values, the
modules and the state dict's tensors stay the same; only their strides change."""
from __future__ import annotations

import torch
import torch.nn as nn


def column_major_linears(model: nn.Module) -> int:
    """Lay out every nn.Linear weight of `model` on the CPU column-major, in place -> how many
    changed (a weight already so, or on another device, is left as it is)."""
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            w = module.weight if isinstance(module, nn.Linear) else None
            if w is None or w.device.type != "cpu" or w.dim() != 2 or w.t().is_contiguous():
                continue
            w.data = w.data.t().contiguous().t()
            changed += 1
    return changed
