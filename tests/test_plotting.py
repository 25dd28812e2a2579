"""hvae_lib.analysis.plotting's "where it stands" pieces (Chapters 4 and 6)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hvae_lib.analysis.plotting import earlier_run_bpd, plot_where_it_stands  # noqa: E402


def test_earlier_run_bpd_reads_the_run_or_falls_back(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"test_bpd": 3.5}))
    assert earlier_run_bpd(tmp_path, 9.9) == (3.5, f"from {(tmp_path / 'results.json').as_posix()}")
    bpd, source = earlier_run_bpd(tmp_path / "missing", 3.71)
    assert bpd == 3.71 and "not found" in source


def test_plot_where_it_stands_prints_every_model_and_draws_the_first_on_top(capsys):
    plot_where_it_stands({"VAE": (3.71, "a"), "NVAE": (3.52, "b")})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("VAE") and "3.710 bits/dim   (a)" in out[0] and out[1].startswith("NVAE")
    ax = plt.gca()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["NVAE", "VAE"]  # barh draws bottom-up: the first name ends at the top
    assert [round(p.get_width(), 2) for p in ax.patches] == [3.52, 3.71]
    plt.close("all")
