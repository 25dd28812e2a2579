"""Diagrams are read off the modules (Chapter 3): what they show must change with the model."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hvae_lib.analysis.diagrams import branch_labels, draw_cell, draw_nvae, nvae_rows  # noqa: E402
from hvae_lib.config import override  # noqa: E402
from hvae_lib.layers.cells import EncoderCell, GenerativeCell  # noqa: E402
from hvae_lib.models.presets import get_preset


def test_cell_diagrams_list_the_cells_layers_in_order():
    assert branch_labels(GenerativeCell(16)) == ["BN 16", "Conv 1x1 16->96", "BN 96", "Swish", "dwConv 5x5 96", "BN 96",
                                                 "Swish", "Conv 1x1 96->16", "BN 16", "SE"]
    assert branch_labels(GenerativeCell(8, expansion=3, kernel_size=3, use_se=False))[4] == "dwConv 3x3 24"
    assert branch_labels(GenerativeCell(8, upsample=True))[:2] == ["Upsample x2", "BN 8"]
    assert branch_labels(EncoderCell(8, downsample=True)) == ["BN 8", "Swish", "Conv 3x3 8->16 /2", "BN 16", "Swish",
                                                              "Conv 3x3 16->16", "SE"]
    fig, ax = plt.subplots()
    assert draw_cell(EncoderCell(4), ax) == branch_labels(EncoderCell(4))
    assert len(ax.patches) >= len(branch_labels(EncoderCell(4)))  # one box per layer, plus arrows
    plt.close(fig)


def test_nvae_diagram_has_one_row_per_group_with_its_shape():
    config = get_preset("nvae_fashion")
    model = config.model.build((1, 28, 28), 8, "logistic_mixture")
    rows = nvae_rows(model)
    assert len(rows) == model.num_groups == 4
    for l, (enc, dec, _) in enumerate(rows):
        z, h, w = model.group_shapes[l]
        assert enc.startswith(f"e_{l}:") and f"{h}x{w}" in enc and f"z_{l}: {z}x{h}x{w}" in dec
    assert "N(0, I)" in rows[0][1] and "prior p(z_1 | z_<1)" in rows[1][1] and "up cell" in rows[1][1]
    deeper = override(config, {"num_groups_per_scale": 3, "num_cell_per_cond_dec": 2}).model.build((1, 28, 28), 8,
                                                                                                   "logistic_mixture")
    assert len(nvae_rows(deeper)) == 6 and "2 gen. cells" in nvae_rows(deeper)[1][1]
    fig, ax = plt.subplots()
    assert draw_nvae(model, ax) == rows
    plt.close(fig)
