"""The exercise checker gives the right verdict for done, undone, wrong and crashing solutions."""
import torch

from hvae_lib.exercises import check, smoke_mode

CASES = [(torch.randn(3, 4),), (torch.randn(2, 5),)]


def reference(x):
    return x * 2


def test_correct(capsys):
    assert check("double", lambda x: x + x, reference, CASES)
    assert "correct" in capsys.readouterr().out


def test_not_done_does_not_raise(capsys):
    def stub(x):
        raise NotImplementedError()

    assert not check("double", stub, reference, CASES)
    assert "not done yet" in capsys.readouterr().out


def test_wrong_values_report_the_largest_error(capsys):
    assert not check("double", lambda x: x * 2 + (x > 1).float(), reference, [(torch.tensor([0.0, 2.0]),)])
    out = capsys.readouterr().out
    assert "largest error 1" in out and "flat index 1" in out


def test_wrong_shape_and_crash(capsys):
    assert not check("double", lambda x: x.sum(), reference, CASES)
    assert "expected shape (3, 4), got ()" in capsys.readouterr().out
    assert not check("double", lambda x: x @ x, reference, CASES)
    assert "raised RuntimeError" in capsys.readouterr().out


def test_smoke_mode(monkeypatch):
    monkeypatch.setenv("HVAE_SMOKE", "1")
    assert smoke_mode()
    monkeypatch.setenv("HVAE_SMOKE", "0")
    assert not smoke_mode()


def test_assert_matches_raises_the_verdict():
    from hvae_lib.exercises import assert_matches

    assert_matches("double", lambda x: x + x, reference, CASES)
    try:
        assert_matches("double", lambda x: x * 3, reference, CASES)
    except AssertionError as err:
        assert "wrong values on case 0" in str(err)
    else:
        raise AssertionError("a wrong answer must raise")

    def stub(x):
        raise NotImplementedError()

    try:
        assert_matches("double", stub, reference, CASES)
    except AssertionError as err:
        assert "not done yet" in str(err)
    else:
        raise AssertionError("an unfinished exercise must raise")


def test_non_tensor_results_are_compared_exactly(capsys):
    assert check("count", lambda n: n + 1, lambda n: n + 1, [(1,), (5,)])
    assert not check("count", lambda n: n, lambda n: n + 1, [(1,)])
    assert "expected 2, got 1" in capsys.readouterr().out


def test_use_if_correct_falls_back_with_a_note(capsys):
    from hvae_lib.exercises import use_if_correct

    mine, library = (lambda: "mine"), (lambda: "library")
    assert use_if_correct("f", mine, library, passed=True)() == "mine"
    assert "using your implementation" in capsys.readouterr().out
    assert use_if_correct("f", mine, library, passed=False)() == "library"
    assert "goes on with hvae_lib's version" in capsys.readouterr().out


def test_reveal_prediction(capsys):
    from hvae_lib.exercises import reveal_prediction

    def unanswered():
        raise NotImplementedError()

    assert reveal_prediction("KL of a collapsed group", unanswered, 0.0, " nats") is None
    assert "measured 0.0 nats" in capsys.readouterr().out
    assert reveal_prediction("KL of a collapsed group", lambda: 0.5, 0.0, " nats") == 0.5
    assert "you predicted 0.5 nats; measured 0.0 nats" in capsys.readouterr().out
