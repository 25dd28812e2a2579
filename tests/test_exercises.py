"""The exercise checker: the right verdict for done, undone, wrong and crashing solutions; no answer
can be had by calling the oracle, however it is reached; hidden kinds of case are visible ones."""
import functools

import pytest
import torch

from hvae_lib import exercises
from hvae_lib.exercises import (CaseKindError, assert_matches, check, reference_of, reveal_prediction, smoke_mode,
                                use_if_correct, verdict)
from hvae_lib.probability.residual_normal import residual_kl

CASES = {"a matrix": (torch.randn(3, 4),), "a vector": (torch.randn(5),)}


def reference(x):
    return x * 2


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.setattr(exercises, "_REFERENCES", {})
    monkeypatch.setattr(exercises, "_VISIBLE_KINDS", {})
    monkeypatch.setattr(exercises, "_ORACLES", {})


def test_correct(capsys):
    assert check("double", lambda x: x + x, reference, CASES)
    assert "correct — matches the reference on 2 kinds of case (a matrix, a vector)" in capsys.readouterr().out


def test_not_done_does_not_raise(capsys):
    def stub(x):
        raise NotImplementedError()

    assert not check("double", stub, reference, CASES)
    assert "not done yet" in capsys.readouterr().out


def test_wrong_values_report_the_largest_error_and_the_kind(capsys):
    assert not check("double", lambda x: x * 2 + (x > 1).float(), reference, {"a step at 1": (torch.tensor([0.0, 2.0]),)})
    out = capsys.readouterr().out
    assert "largest error 1" in out and "flat index 1" in out and "on the case 'a step at 1'" in out


def test_wrong_shape_and_crash(capsys):
    assert not check("double", lambda x: x.sum(), reference, CASES)
    assert "expected shape (3, 4), got ()" in capsys.readouterr().out
    assert not check("double", lambda x: x @ x.T @ x.T, reference, CASES)
    assert "raised RuntimeError" in capsys.readouterr().out


def test_cases_must_be_named_by_kind():
    with pytest.raises(TypeError, match="map a kind of case"):
        check("double", reference, reference, [(torch.ones(2),)])


def test_smoke_mode(monkeypatch):
    monkeypatch.setenv("HVAE_SMOKE", "1")
    assert smoke_mode()
    monkeypatch.setenv("HVAE_SMOKE", "0")
    assert not smoke_mode()


def test_assert_matches_raises_the_verdict():
    check("double", lambda x: x + x, reference, CASES)
    assert_matches("double", lambda x: x + x, reference, CASES)
    with pytest.raises(AssertionError, match="wrong values"):
        assert_matches("double", lambda x: x * 3, reference, CASES)

    def stub(x):
        raise NotImplementedError()

    with pytest.raises(AssertionError, match="not done yet"):
        assert_matches("double", stub, reference, CASES)


def test_a_hidden_kind_the_visible_check_never_ran_is_refused():
    check("double", lambda x: x + x, reference, {"a matrix": (torch.ones(2, 2),)})
    with pytest.raises(CaseKindError, match=r"hidden cases \['an empty tensor'\] are of kinds its visible check never ran"):
        assert_matches("double", lambda x: x + x, reference, {"a matrix": (torch.ones(3, 3),),
                                                              "an empty tensor": (torch.ones(0),)})
    with pytest.raises(CaseKindError):  # no visible check at all
        assert_matches("triple", lambda x: 3 * x, lambda x: 3 * x, {"a matrix": (torch.ones(2, 2),)})


def test_nested_results_are_compared_item_by_item(capsys):
    pair = lambda x: (x + 1, {"n": int(x.numel()), "mean": float(x.mean())})  # noqa: E731
    assert check("pair", pair, pair, CASES)
    assert not check("pair", lambda x: (x + 1, {"n": int(x.numel()), "mean": float(x.mean()) + 1}), pair, CASES)
    assert "in item 1 under 'mean'" in capsys.readouterr().out
    assert not check("count", lambda n: n, lambda n: n + 1, {"one": (1,)})
    assert "expected 2, got 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the answer cannot be looked up

def residual_cases():
    g = torch.Generator().manual_seed(0)
    return {"small": (torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5, torch.rand(4, generator=g) + 0.5),
            "3-d": (torch.randn(2, 3, 2, generator=g), torch.rand(2, 3, 2, generator=g) + 0.5,
                    torch.rand(2, 3, 2, generator=g) + 0.5)}


def honest(dmu, dsigma, sigma_p):
    return 0.5 * ((dmu / sigma_p) ** 2 + dsigma**2 - torch.log(dsigma**2) - 1)


def calls_it(dmu, dsigma, sigma_p):
    return residual_kl(dmu, dsigma, sigma_p)


def imports_it_under_another_name(dmu, dsigma, sigma_p):
    from hvae_lib.probability import residual_normal as rn

    kl = getattr(rn, "residual" + "_kl")
    return kl(dmu, dsigma, sigma_p)


def swallows_everything(dmu, dsigma, sigma_p):
    try:
        return residual_kl(dmu, dsigma, sigma_p)
    except BaseException:  # noqa: BLE001  (a student hiding the guard's exception)
        return honest(dmu, dsigma, sigma_p)


def through_the_registry(dmu, dsigma, sigma_p):
    return reference_of("residual_kl")(dmu, dsigma, sigma_p)


@pytest.mark.parametrize("lazy", [calls_it, imports_it_under_another_name, swallows_everything, through_the_registry,
                                  lambda a, b, c: residual_kl(a, b, c),
                                  functools.partial(residual_kl)])
@pytest.mark.parametrize("reference", [residual_kl, "hvae_lib.probability.residual_normal:residual_kl"])
def test_calling_the_reference_fails_both_checks(capsys, lazy, reference):
    assert check("residual_kl", honest, reference, residual_cases())
    capsys.readouterr()
    assert not check("residual_kl", lazy, reference, residual_cases())
    assert ("your function calls hvae_lib.probability.residual_normal.residual_kl, which is the answer this check "
            "compares with") in capsys.readouterr().out
    with pytest.raises(AssertionError, match="which is the answer this check compares with"):
        assert_matches("residual_kl", lazy, reference, residual_cases())


def test_a_lambda_reference_forbids_the_library_function_it_wraps(capsys):
    from hvae_lib.analysis.operator_norm import conv_operator_norm

    adapter = lambda w, size: conv_operator_norm(w, (size, size), iterations=50).float()  # noqa: E731
    cases = {"3x3 kernel": (torch.randn(2, 2, 3, 3), 5)}
    assert not check("conv_norm", lambda w, size: conv_operator_norm(w, (size, size), iterations=50), adapter, cases)
    assert "calls hvae_lib.analysis.operator_norm.conv_operator_norm" in capsys.readouterr().out


def test_a_worksheet_oracle_and_a_forbidden_shortcut_are_caught(capsys):
    def exact_oracle(x):  # defined "in the worksheet", like Chapter 4's dense_conv_norm
        return x.double().square().sum().sqrt()

    assert not check("norm", lambda x: exact_oracle(x), exact_oracle, CASES)
    assert "calls test_exercises.test_a_worksheet_oracle_and_a_forbidden_shortcut_are_caught.<locals>.exact_oracle" \
        in capsys.readouterr().out

    from hvae_lib.models.exact.binary_ar import BinaryAR

    torch.manual_seed(0)
    ar = BinaryAR(4, hidden=8)
    x = torch.bernoulli(torch.full((3, 4), 0.5))

    def log_prob_by_hand(model, images):
        logits = model(images)  # (B, D): one pass scores every conditional
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="none").sum(1)

    def shortcut(model, images):
        return model.log_prob(images)

    def students_own(model, images):
        logits = model(images)
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="none").sum(1)

    oracle = lambda model, images: log_prob_by_hand(model, images)  # noqa: E731
    assert check("ar_log_prob", students_own, oracle, {"three images": (ar, x)}, forbid=(BinaryAR.log_prob,))
    capsys.readouterr()
    assert not check("ar_log_prob", shortcut, oracle, {"three images": (ar, x)}, forbid=(ar.log_prob,))
    assert "calls hvae_lib.models.exact.binary_ar.BinaryAR.log_prob" in capsys.readouterr().out


def test_the_guard_leaves_no_profiler_behind():
    import sys

    before = sys.getprofile()
    check("residual_kl", calls_it, residual_kl, residual_cases())
    check("residual_kl", honest, residual_kl, residual_cases())
    assert sys.getprofile() is before


def test_a_hidden_oracle_joins_the_visible_one(capsys):
    """The hidden test compares with another oracle: a student who calls the visible reference still
    fails it (the answer they looked up is an oracle of the exercise all the same)."""
    exact = lambda x: torch.linalg.matrix_norm(x, ord=2)  # noqa: E731

    def library_power_iteration(x):
        return torch.linalg.matrix_norm(x, ord=2)  # (a stand-in for the library's power iteration)

    cases = {"square": (torch.randn(4, 4),)}
    assert not check("top_sv", lambda x: library_power_iteration(x), library_power_iteration, cases)
    with pytest.raises(AssertionError, match="calls test_exercises.*library_power_iteration"):
        assert_matches("top_sv", lambda x: library_power_iteration(x), exact, cases)


def test_a_forbidden_builtin_is_caught_whatever_it_is_called_as(capsys):
    def power_iteration(x):
        v = torch.ones(x.shape[1], dtype=x.dtype)
        for _ in range(200):
            v = x.T @ (x @ v)
            v = v / v.norm()
        return (x @ v).norm()

    cases = {"square": (torch.randn(5, 5, dtype=torch.float64),)}
    for shortcut in (lambda x: torch.linalg.svdvals(x)[0], lambda x: torch.linalg.svdvals(x.T)[0],
                     lambda x: x.svd()[1][0], lambda x: torch.svd(x)[1][0]):
        assert not check("top_sv", shortcut, power_iteration, cases, forbid=(torch.linalg.svdvals, torch.svd))
        assert "which is the answer this check compares with" in capsys.readouterr().out
    assert check("top_sv_by_hand", power_iteration, lambda x: torch.linalg.svdvals(x)[0], cases, forbid=(torch.svd,))


def test_a_decorated_reference_forbids_itself_and_not_every_function_decorated_alike(capsys):
    """``@torch.no_grad()`` wraps functions in one shared wrapper: the guard watches the function inside."""
    @torch.no_grad()
    def oracle(x):
        return x * 2

    @torch.no_grad()
    def unrelated(x):  # decorated alike, and legitimately used by the student
        return x + x

    assert check("double_no_grad", lambda x: unrelated(x), oracle, CASES)
    capsys.readouterr()
    assert not check("double_no_grad", lambda x: oracle(x), oracle, CASES)
    assert "calls test_exercises" in capsys.readouterr().out and "oracle" in str(exercises._ORACLES)


def test_verdict_of_a_class_reference_forbids_its_methods():
    from hvae_lib.probability.residual_normal import NVAENormal

    def uses_the_class(dmu, dsigma, sigma_p):
        prior = NVAENormal(torch.zeros_like(dmu), sigma_p)
        return NVAENormal(dmu, sigma_p * dsigma).kl(prior, kl_function=honest)

    ok, message = verdict("kl", uses_the_class, residual_kl, residual_cases(), forbid=(NVAENormal,))
    assert ok is False and "NVAENormal" in message


def test_a_decorated_oracle_forbids_itself_not_its_decorator(capsys):
    """@torch.no_grad() wraps a function in code that every decorated function shares: forbidding the
    oracle (a function or a class's method) must not forbid the other decorated functions the
    student legitimately calls (the optimiser's step, clip_grad_norm_, ...)."""
    @torch.no_grad()
    def decorated_oracle(x):
        return x * 2

    class Oracles:
        @torch.no_grad()
        def method(self, x):
            return x * 2

    @torch.no_grad()
    def innocent(x):
        return x + x

    assert check("double", lambda x: innocent(x), decorated_oracle, CASES, forbid=(Oracles,))
    assert not check("double", lambda x: decorated_oracle(x), decorated_oracle, CASES)
    assert "decorated_oracle" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the rest of the helpers

def test_use_if_correct_falls_back_with_a_note(capsys):
    mine, library = (lambda: "mine"), (lambda: "library")
    assert use_if_correct("f", mine, library, passed=True)() == "mine"
    assert "using your implementation" in capsys.readouterr().out
    assert use_if_correct("f", mine, library, passed=False)() == "library"
    assert "goes on with hvae_lib's version" in capsys.readouterr().out
    assert use_if_correct("f", mine, "hvae_lib.probability.residual_normal:residual_kl", passed=False) is residual_kl


def test_reveal_prediction(capsys):
    def unanswered():
        raise NotImplementedError()

    assert reveal_prediction("KL of a collapsed group", unanswered, 0.0, " nats") is None
    assert "measured 0.0 nats" in capsys.readouterr().out
    assert reveal_prediction("KL of a collapsed group", lambda: 0.5, 0.0, " nats") == 0.5
    assert "you predicted 0.5 nats; measured 0.0 nats" in capsys.readouterr().out
