"""Check cells for the chapters' exercises: compare a student's function with the library's.

``check(student_fn, reference_fn, cases)`` runs both on every case and prints one verdict: "not done
yet" for an untouched exercise (it raises NotImplementedError), or what was expected against what
came back — shapes, the largest error, the first input where they differ. It never raises, so a
worksheet runs top to bottom whatever state the exercises are in; it returns True on success.
"""
from __future__ import annotations

import os
import traceback
from typing import Callable, Iterable

import torch


def smoke_mode() -> bool:
    """True when HVAE_SMOKE=1: chapters shrink data and steps to run in seconds (CI)."""
    return os.environ.get("HVAE_SMOKE", "") not in ("", "0", "false", "False")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def check(name: str, student_fn: Callable, reference_fn: Callable, cases: Iterable[tuple], atol: float = 1e-4,
          rtol: float = 1e-4) -> bool:
    """Run ``student_fn(*case)`` against ``reference_fn(*case)`` for each case; print a verdict."""
    for i, case in enumerate(cases):
        expected = reference_fn(*case)
        try:
            got = student_fn(*case)
        except NotImplementedError:
            print(f"{name}: not done yet — fill in the body of the function above and run this cell again.")
            return False
        except Exception as err:  # a student's bug: show it briefly, do not stop the notebook
            where = traceback.extract_tb(err.__traceback__)[-1]
            print(f"{name}: raised {type(err).__name__}: {err} (line {where.lineno}) on case {i} "
                  f"with inputs {', '.join(_describe(a) for a in case)}.")
            return False
        if not isinstance(got, torch.Tensor):
            print(f"{name}: expected a tensor like {_describe(expected)}, got {_describe(got)}.")
            return False
        if got.shape != expected.shape:
            print(f"{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)} on case {i} "
                  f"(inputs: {', '.join(_describe(a) for a in case)}).")
            return False
        got, expected = got.detach().double(), expected.detach().double()
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=False):
            err = (got - expected).abs()
            j = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax())
            print(f"{name}: wrong values on case {i}: largest error {err.flatten()[j].item():.3g} at flat index {j} "
                  f"(expected {expected.flatten()[j].item():.6g}, got {got.flatten()[j].item():.6g}).")
            return False
    print(f"{name}: correct — matches hvae_lib on {i + 1} random cases.")
    return True
