"""The autoregressive model over binary pixels (Chapter 7): normalised, autoregressive, D passes to sample."""
import pytest
import torch

from hvae_lib.models.exact.binary_ar import BinaryAR, all_binary_vectors, downsample_binarize


def test_all_binary_vectors_lists_every_vector_once():
    v = all_binary_vectors(5)
    assert v.shape == (32, 5)
    assert set(v.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(row.tolist()) for row in v}) == 32
    assert v[5].tolist() == [1, 0, 1, 0, 0]  # row k holds the bits of k, lowest first
    with pytest.raises(ValueError, match="1 <= D <= 20"):
        all_binary_vectors(21)


def test_probabilities_sum_to_one_over_all_images():
    torch.manual_seed(0)
    ar = BinaryAR(9, hidden=16)
    with torch.no_grad():
        for p in ar.parameters():
            p.normal_(0, 1.0)  # far from the initial weights, so the check is not trivially uniform
        total = ar.log_prob(all_binary_vectors(9)).double().exp().sum()
    assert abs(total.item() - 1) < 1e-5


def test_logit_i_depends_only_on_earlier_pixels():
    torch.manual_seed(1)
    ar = BinaryAR(8, hidden=20)
    x = torch.zeros(1, 8, requires_grad=True)
    logits = ar(x)
    for i in range(8):
        (grad,) = torch.autograd.grad(logits[0, i], x, retain_graph=True)
        assert torch.all(grad[0, i:] == 0), f"logit {i} sees pixel >= {i}"
        if i > 0:
            assert grad[0, :i].abs().sum() > 0, f"logit {i} ignores its past"


def test_log_prob_is_the_sum_of_the_bernoulli_conditionals():
    torch.manual_seed(2)
    ar = BinaryAR(6, hidden=12)
    x = (torch.rand(4, 6) < 0.5).float()
    p = torch.sigmoid(ar(x))
    by_hand = torch.where(x == 1, p, 1 - p).log().sum(1)
    assert torch.allclose(ar.log_prob(x), by_hand, atol=1e-5)


def test_sampling_follows_the_conditionals_and_the_uniforms():
    torch.manual_seed(3)
    ar = BinaryAR(4, hidden=8)
    with torch.no_grad():
        ar.out.bias.copy_(torch.tensor([3.0, -3.0, 0.0, 0.0]))
    u = torch.rand(2000, 4)
    x = ar.sample_from_uniforms(u)
    # p(x_0 = 1) = sigmoid(3 + 0) exactly: output 0 sees nothing
    assert abs(x[:, 0].mean().item() - torch.sigmoid(torch.tensor(3.0)).item()) < 0.03
    # each pixel is exactly the threshold of its uniform at the model's conditional given the sample
    p = torch.sigmoid(ar(x))
    assert torch.equal(x, (u < p).float())
    # and the empirical distribution matches the model's over all 16 images
    codes = (x * 2 ** torch.arange(4)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).float() / len(x)
    model = ar.log_prob(all_binary_vectors(4)).exp()
    assert (freq - model).abs().max() < 0.04


def test_downsample_binarize_blocks_and_threshold():
    img = torch.zeros(2, 1, 8, 8)
    img[0, :, :4, :4] = 1.0  # top-left block full
    img[1, :, 4:, 4:] = 0.2  # bottom-right block below the threshold
    v = downsample_binarize(img, side=2, threshold=0.3)
    assert v.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        downsample_binarize(torch.zeros(2, 3, 8, 8), 2)


def test_wrong_shapes_get_one_clear_sentence():
    ar = BinaryAR(4, hidden=4)
    with pytest.raises(ValueError, match=r"vectors of 4 binary values"):
        ar(torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="hidden >= num_dims - 1"):
        BinaryAR(10, hidden=3)
