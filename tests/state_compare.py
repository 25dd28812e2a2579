"""What several tests compare: nested state dicts (model, EMA, optimiser, RNG) bit for bit."""
import torch


def state_equal(a, b) -> bool:
    """Nested state dicts equal bit for bit (same dtypes, same values, same keys and lengths)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    return a == b
