"""Check and grade cells for the chapters' exercises: compare a student's function with an oracle
the student cannot simply call (every chapter; the instructors' guide explains the grading).

Every exercise is a function whose body the worksheet clears, followed by one graded cell
(nbgrader ``grade: true`` with points) of two parts:

- visible: ``ok = check(name, student_fn, reference, cases)`` prints one verdict — "not done yet"
  for an untouched exercise (it raises NotImplementedError), or what was expected against what came
  back: shapes, the largest error, the case where they differ. It never raises, so a worksheet runs
  top to bottom whatever state the exercises are in; it returns True on success;
- hidden (between nbgrader's hidden-test markers, removed from the worksheet and restored when
  nbgrader autogrades): ``assert_matches(...)`` on other cases, which raises AssertionError with
  the same verdict, so a wrong or unfinished exercise loses exactly that cell's points.

**Cases are named by kind**: ``cases`` maps a short description of what a case exercises ("stride
2", "negative KLs", "a 5-bit image") to the arguments. The kinds of an exercise's hidden cases must
be among the kinds its visible check showed the student; ``assert_matches`` refuses (as a course
authoring error) a hidden kind the visible check never ran, so a student never sees "correct" on
a visible check and then loses the points on a kind of input the hidden tests alone try.

**The answer cannot be looked up.** While the student's function runs, every function it reaches is
watched (``sys.setprofile``): reaching an oracle fails the check with one sentence naming it,
however it was imported, aliased or wrapped. The oracles of an exercise are every ``reference`` its
checks, visible and hidden, compare with (for a ``lambda`` reference, an adapter, the functions the
lambda calls), and whatever ``forbid`` adds: a shortcut the text rules out, such as Chapter 7's
``BinaryAR.log_prob``, or a built-in such as ``torch.linalg.svdvals`` (matched by name, so
``x.svd()`` counts as ``torch.svd``). A reference may be given as ``"module:qualname"`` so that the
worksheet's namespace never holds it under the name the check uses.

``reveal_prediction`` serves the "predict, then run" questions; ``use_if_correct`` picks the
function the chapter goes on with: the student's once its check passed, the library's until then.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import sys
import traceback
from pathlib import Path
from types import CodeType
from typing import Any, Callable, Mapping

import torch

Reference = Callable | str  # a callable, or "package.module:qualified.name"


class ReachedReference(BaseException):
    """Raised inside the student's function when it reaches the oracle (a BaseException, so a bare
    ``except Exception`` in the student's code cannot swallow it)."""


class CaseKindError(AssertionError):
    """A hidden test tries a kind of case that the visible check never showed (an authoring error)."""


def smoke_mode() -> bool:
    """True when HVAE_SMOKE=1: chapters shrink data and steps to run in seconds (CI)."""
    return os.environ.get("HVAE_SMOKE", "") not in ("", "0", "false", "False")


# ----------------------------------------------------------------------------- the oracle and its guard

_REFERENCES: dict[str, Callable] = {}  # exercise name -> the reference its first check compared with
_ORACLES: dict[str, list[Reference]] = {}  # exercise name -> every reference and forbidden shortcut seen
_VISIBLE_KINDS: dict[str, set[str]] = {}  # exercise name -> kinds of case its visible checks ran
_LIBRARY = Path(__file__).resolve().parent
_INSTALLED = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})


def resolve(reference: Reference) -> Callable:
    """The callable a ``"module:qualname"`` string names (a callable is returned as it is)."""
    if not isinstance(reference, str):
        return reference
    module, _, qualname = reference.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def reference_of(name: str) -> Callable:
    """The reference the visible check of exercise ``name`` compared with (what a student who looks
    the answer up would call; the end-to-end grading test answers every exercise this way)."""
    return _REFERENCES[name]


def _label(fn) -> str:
    return f"{getattr(fn, '__module__', None) or 'torch'}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


def _is_course_code(code: CodeType) -> bool:
    """Code of the library or of the notebook/worksheet, not of torch, numpy or Python itself."""
    if code.co_filename.startswith("<"):
        return not code.co_filename.startswith("<frozen")
    path = str(Path(code.co_filename).resolve())
    return path.startswith(str(_LIBRARY)) or not any(path.startswith(p) for p in _INSTALLED)


class Forbidden:
    """What a student's function must not reach: Python code objects, and built-in (C) functions,
    the latter matched by name too so that ``torch.svd(x)`` and ``x.svd()`` are the same shortcut."""

    def __init__(self):
        self.codes: dict[CodeType, str] = {}
        self.builtins: dict[str, str] = {}

    def __bool__(self):
        return bool(self.codes or self.builtins)

    def add(self, obj: Reference, case: tuple | None = None) -> None:
        obj = resolve(obj)
        if isinstance(obj, functools.partial):
            obj = obj.func
        if inspect.ismethod(obj):
            obj = obj.__func__
        # A decorated function (``@torch.no_grad()``) is a wrapper whose code every function with that
        # decorator shares: forbid the function it wraps, not the wrapper.
        obj = inspect.unwrap(obj) if inspect.isfunction(obj) else obj
        if inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj):
            self.builtins[obj.__name__] = _label(obj)
        elif inspect.isclass(obj):
            self.codes.update({inspect.unwrap(f).__code__: _label(f) for f in vars(obj).values() if inspect.isfunction(f)})
        elif inspect.isfunction(obj) and obj.__name__ == "<lambda>":
            if case is not None:  # an adapter: the oracle is what it calls
                self.codes.update(_direct_callees(obj, case))
        elif inspect.isfunction(obj):
            self.codes[obj.__code__] = _label(obj)
        elif callable(obj):  # a module or another callable instance
            self.add(getattr(type(obj), "forward", None) or type(obj).__call__)

    def reached(self, frame, event, arg) -> str | None:
        if event == "call":
            return self.codes.get(frame.f_code)
        if event == "c_call":
            return self.builtins.get(getattr(arg, "__name__", None))
        return None


def _direct_callees(fn: Callable, case: tuple) -> dict[CodeType, str]:
    """The course functions ``fn`` (an adapter) calls directly on ``case``: the oracle behind it."""
    found: dict[CodeType, str] = {}

    def profiler(frame, event, arg):
        if event == "call" and frame.f_back is not None and frame.f_back.f_code is fn.__code__:
            if _is_course_code(frame.f_code):
                found[frame.f_code] = f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}"

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        fn(*case)
    finally:
        sys.setprofile(previous)
    return found


def forbidden_for(name: str, case: tuple) -> Forbidden:
    """Every reference any check of exercise ``name`` has compared with so far, the functions a
    lambda reference calls, and every shortcut a check forbade."""
    forbidden = Forbidden()
    for oracle in _ORACLES.get(name, ()):
        forbidden.add(oracle, case)
    return forbidden


def run_guarded(fn: Callable, case: tuple, forbidden: Forbidden):
    """``fn(*case)``, raising :class:`ReachedReference` naming the first forbidden function it reaches."""
    reached: list[str] = []

    def profiler(frame, event, arg):
        if (what := forbidden.reached(frame, event, arg)) is not None:
            reached.append(what)
            raise ReachedReference(what)

    previous = sys.getprofile()
    sys.setprofile(profiler if forbidden else previous)
    try:
        result = fn(*case)
    finally:
        sys.setprofile(previous)
    if reached:  # the student's code swallowed the ReachedReference
        raise ReachedReference(reached[0])
    return result


# ----------------------------------------------------------------------------- comparing answers

def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def difference(got, expected, atol: float, rtol: float, where: str = "") -> str:
    """'' when ``got`` matches ``expected`` (tensors to tolerance, numbers likewise, sequences and
    dicts element by element, anything else by ==), else what differs, in one phrase."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor like {_describe(expected)}{where}, got {_describe(got)}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}{where}, got {tuple(got.shape)}"
        got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
        if torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=False):
            return ""
        err = (got - expected).abs()
        j = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax())
        return (f"wrong values{where}: largest error {err.flatten()[j].item():.3g} at flat index {j} "
                f"(expected {expected.flatten()[j].item():.6g}, got {got.flatten()[j].item():.6g})")
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return "" if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) else f"expected {expected!r}{where}, got {got!r}"
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)):
        if len(got) != len(expected):
            return f"expected {len(expected)} items{where}, got {len(got)}"
        for k, (g, e) in enumerate(zip(got, expected)):
            if problem := difference(g, e, atol, rtol, f"{where} in item {k}"):
                return problem
        return ""
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        if set(got) != set(expected):
            return f"expected the keys {sorted(expected)}{where}, got {sorted(got)}"
        for k in expected:
            if problem := difference(got[k], expected[k], atol, rtol, f"{where} under {k!r}"):
                return problem
        return ""
    return "" if got == expected else f"expected {expected!r}{where}, got {got!r}"


def _named_cases(cases) -> dict[str, tuple]:
    if not isinstance(cases, Mapping):
        raise TypeError("cases must map a kind of case (a short description) to its arguments, e.g. "
                        "{'stride 1': (weight, 8), 'stride 2': (weight, 16)}, so hidden and visible kinds can be compared.")
    return {str(kind): (args if isinstance(args, tuple) else (args,)) for kind, args in cases.items()}


def verdict(name: str, student_fn: Callable, reference: Reference, cases: Mapping[str, tuple], atol: float = 1e-4,
            rtol: float = 1e-4, forbid: tuple[Reference, ...] = ()) -> tuple[bool | None, str]:
    """(ok, message) of ``student_fn(*case)`` against ``reference(*case)`` over the named cases; ok is
    None when the exercise is not done yet (it raised NotImplementedError)."""
    cases = _named_cases(cases)
    reference_fn = resolve(reference)
    oracles = _ORACLES.setdefault(name, [])
    oracles += [r for r in (reference, *forbid) if not any(r is o for o in oracles)]
    forbidden = forbidden_for(name, next(iter(cases.values()))) if cases else Forbidden()
    for kind, case in cases.items():
        expected = reference_fn(*case)
        try:
            got = run_guarded(student_fn, case, forbidden)
        except NotImplementedError:
            return None, f"{name}: not done yet — fill in the body of the function above and run this cell again."
        except ReachedReference as reached:
            return False, (f"{name}: your function calls {reached.args[0]}, which is the answer this check compares "
                           f"with; write the computation yourself (torch and the helpers the text names are fine).")
        except Exception as err:  # a student's bug: show it briefly, do not stop the notebook
            where = traceback.extract_tb(err.__traceback__)[-1]
            return False, (f"{name}: raised {type(err).__name__}: {err} (line {where.lineno}) on the case "
                           f"{kind!r} with inputs {', '.join(_describe(a) for a in case)}.")
        if problem := difference(got, expected, atol, rtol):
            return False, f"{name}: {problem} on the case {kind!r}."
    return True, f"{name}: correct — matches the reference on {len(cases)} kinds of case ({', '.join(cases)})."


def check(name: str, student_fn: Callable, reference: Reference, cases: Mapping[str, tuple], atol: float = 1e-4,
          rtol: float = 1e-4, forbid: tuple[Reference, ...] = ()) -> bool:
    """Print the verdict of ``student_fn`` against ``reference`` on the cases; True when it matches.
    Never raises (the visible part of a graded cell)."""
    cases = _named_cases(cases)
    _REFERENCES.setdefault(name, resolve(reference))
    _VISIBLE_KINDS.setdefault(name, set()).update(cases)
    ok, message = verdict(name, student_fn, reference, cases, atol, rtol, forbid)
    print(message)
    return bool(ok)


def assert_matches(name: str, student_fn: Callable, reference: Reference, cases: Mapping[str, tuple],
                   atol: float = 1e-4, rtol: float = 1e-4, forbid: tuple[Reference, ...] = ()) -> None:
    """Raise AssertionError with the verdict unless ``student_fn`` matches (the hidden part of a graded
    cell). Every kind of case here must have been run by a visible ``check`` of ``name`` first."""
    cases = _named_cases(cases)
    unseen = sorted(set(cases) - _VISIBLE_KINDS.get(name, set()))
    if unseen:
        raise CaseKindError(f"{name}: the hidden cases {unseen} are of kinds its visible check never ran "
                            f"({sorted(_VISIBLE_KINDS.get(name, ()))}); add a case of each kind to the visible check.")
    ok, message = verdict(name, student_fn, reference, cases, atol, rtol, forbid)
    if not ok:
        raise AssertionError(message)


def use_if_correct(name: str, student_fn: Callable, reference: Reference, passed: bool) -> Callable:
    """The function the chapter goes on with: the student's when its check passed, else the
    library's, with a one-line note saying which."""
    if passed:
        print(f"{name}: using your implementation from here on.")
        return student_fn
    print(f"{name}: your exercise is not finished, so the chapter goes on with hvae_lib's version; "
          f"finish it and re-run from that cell to use yours.")
    return resolve(reference)


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
