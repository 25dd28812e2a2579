"""The Chapter 1 ConvVAE: shapes, the ELBO's parts, clear errors, training lowers the loss."""
import pytest
import torch

from hvae_lib.models.vae import ConvVAE
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.objectives import elbo


@pytest.mark.parametrize("shape,likelihood,bits", [((1, 28, 28), "logistic_mixture", 8), ((1, 32, 32), "bernoulli", 1),
                                                    ((3, 32, 32), "logistic_mixture", 8)])
def test_forward_shapes_and_elbo(shape, likelihood, bits):
    model = ConvVAE(shape, bits, latent_dim=6, channels=8, likelihood=likelihood)
    x = torch.randint(0, 2**bits, (5, *shape)) / (2**bits - 1)
    out = model(x)
    assert out.log_px_z.shape == (5,) and out.kl_per_group.shape == (5, 1) and out.log_q_minus_log_p.shape == (5,)
    terms = elbo(out, model.num_dims)
    assert torch.allclose(terms.elbo, out.log_px_z - out.kl_per_group[:, 0])
    assert (terms.elbo < 0).all() and terms.bpd > 0
    samples = model.sample(3)
    assert samples.shape == (3, *shape) and 0 <= samples.min() and samples.max() <= 1
    assert torch.allclose(samples * (2**bits - 1), (samples * (2**bits - 1)).round(), atol=1e-4)


def test_kl_is_analytic_kl_to_standard_normal():
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=4, channels=8)
    x = torch.rand(3, 1, 28, 28)
    q = model.encode(x)
    expected = sum_except_batch(q.kl(DiagonalGaussian.standard(q.mu.shape)))
    assert torch.allclose(model(x).kl_per_group[:, 0], expected, atol=1e-5)


def test_wrong_image_shape_is_one_clear_sentence():
    model = ConvVAE((1, 28, 28))
    with pytest.raises(ValueError) as err:
        model(torch.rand(2, 3, 32, 32))
    message = str(err.value)
    assert "(B, 1, 28, 28)" in message and "(2, 3, 32, 32)" in message and "\n" not in message
    with pytest.raises(ValueError, match="multiples of 4"):
        ConvVAE((1, 30, 30), num_downsamples=2)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=4, channels=8)
    x = torch.randint(0, 256, (16, 1, 28, 28)) / 255
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(30):
        loss = elbo(model(x), model.num_dims).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 100  # nats per image


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=4, channels=8)
    x = torch.rand(4, 1, 28, 28)
    grads = []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        torch.manual_seed(1)
        elbo(model(x), model.num_dims).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
