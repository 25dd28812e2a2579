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
