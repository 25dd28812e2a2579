"""Check and grade cells for the chapters' exercises: compare a student's function with the library's.

Every exercise is a function whose body the worksheet clears, followed by one graded cell
(nbgrader ``grade: true`` with points) of two parts:

- visible: ``ok = check(name, student_fn, reference_fn, cases)`` prints one verdict — "not done
  yet" for an untouched exercise (it raises NotImplementedError), or what was expected against what
  came back: shapes, the largest error, the first input where they differ. It never raises, so a
  worksheet runs top to bottom whatever state the exercises are in; it returns True on success;
- hidden (between nbgrader's hidden-test markers, removed from the worksheet and restored when
  nbgrader autogrades): ``assert_matches(...)`` on other cases, which raises AssertionError with
  the same verdict, so a wrong or unfinished exercise loses exactly that cell's points.

``reveal_prediction`` serves the "predict, then run" questions: a function returning the
student's guess (the solution returns the answer, with the reason as a comment; its grade_id starts
with ``predict``, it carries no points), printed beside the measurement that follows.

``use_if_correct`` then picks the function the chapter goes on with: the student's once its check
passed, the library's (with a printed note) until then.
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Iterable

import torch


def smoke_mode() -> bool:
    """True when HVAE_SMOKE=1: chapters shrink data and steps to run in seconds (CI)."""
    return os.environ.get("HVAE_SMOKE", "") not in ("", "0", "false", "False")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def verdict(name: str, student_fn: Callable, reference_fn: Callable, cases: Iterable[tuple], atol: float = 1e-4,
            rtol: float = 1e-4) -> tuple[bool | None, str]:
    """(ok, message) of ``student_fn(*case)`` against ``reference_fn(*case)`` over the cases; ok is
    None when the exercise is not done yet (it raised NotImplementedError)."""
    i = -1
    for i, case in enumerate(cases):
        expected = reference_fn(*case)
        try:
            got = student_fn(*case)
        except NotImplementedError:
            return None, f"{name}: not done yet — fill in the body of the function above and run this cell again."
        except Exception as err:  # a student's bug: show it briefly, do not stop the notebook
            where = traceback.extract_tb(err.__traceback__)[-1]
            return False, (f"{name}: raised {type(err).__name__}: {err} (line {where.lineno}) on case {i} "
                           f"with inputs {', '.join(_describe(a) for a in case)}.")
        if not isinstance(expected, torch.Tensor):  # a number, a tuple of ints, ...
            if got != expected:
                return False, f"{name}: expected {expected!r}, got {got!r} on case {i}."
            continue
        if not isinstance(got, torch.Tensor):
            return False, f"{name}: expected a tensor like {_describe(expected)}, got {_describe(got)}."
        if got.shape != expected.shape:
            return False, (f"{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)} on case {i} "
                           f"(inputs: {', '.join(_describe(a) for a in case)}).")
        got, expected = got.detach().double(), expected.detach().double()
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=False):
            err = (got - expected).abs()
            j = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax())
            return False, (f"{name}: wrong values on case {i}: largest error {err.flatten()[j].item():.3g} at flat "
                           f"index {j} (expected {expected.flatten()[j].item():.6g}, got {got.flatten()[j].item():.6g}).")
    return True, f"{name}: correct — matches hvae_lib on {i + 1} cases."


def check(name: str, student_fn: Callable, reference_fn: Callable, cases: Iterable[tuple], atol: float = 1e-4,
          rtol: float = 1e-4) -> bool:
    """Print the verdict of ``student_fn`` against ``reference_fn`` on the cases; True when it matches.
    Never raises (the visible part of a graded cell)."""
    ok, message = verdict(name, student_fn, reference_fn, cases, atol, rtol)
    print(message)
    return bool(ok)


def assert_matches(name: str, student_fn: Callable, reference_fn: Callable, cases: Iterable[tuple],
                   atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Raise AssertionError with the verdict unless ``student_fn`` matches (the hidden part of a graded cell)."""
    ok, message = verdict(name, student_fn, reference_fn, cases, atol, rtol)
    if not ok:
        raise AssertionError(message)


def use_if_correct(name: str, student_fn: Callable, reference_fn: Callable, passed: bool) -> Callable:
    """The function the chapter goes on with: the student's when its check passed, else the
    library's, with a one-line note saying which."""
    if passed:
        print(f"{name}: using your implementation from here on.")
        return student_fn
    print(f"{name}: your exercise is not finished, so the chapter goes on with hvae_lib's version; "
          f"finish it and re-run from that cell to use yours.")
    return reference_fn


def reveal_prediction(question: str, predict_fn: Callable[[], Any], measured: Any, unit: str = "") -> Any:
    """The "predict, then run" pattern: print the student's prediction (``predict_fn()``, whose body the
    worksheet clears) beside the measured value. Never raises; returns the prediction, or None when
    the student has not made one yet."""
    try:
        guess = predict_fn()
    except NotImplementedError:
        print(f"{question}: measured {measured}{unit}. (Write your prediction in the function above first, "
              f"then compare.)")
        return None
    print(f"{question}: you predicted {guess}{unit}; measured {measured}{unit}.")
    return guess
