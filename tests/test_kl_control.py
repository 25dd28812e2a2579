"""KL warm-up, free bits and KL balancing (hvae_lib.probability.kl_control), each on its own, against hand-computed values."""
import pytest
import torch

from hvae_lib.probability.kl_control import free_bits, kl_balance_coeffs, kl_objective, kl_warmup_beta


def test_warmup_is_linear_from_start_to_one_then_flat():
    assert kl_warmup_beta(0, 100, 1e-4) == pytest.approx(1e-4)
    assert kl_warmup_beta(50, 100, 1e-4) == pytest.approx(1e-4 + (1 - 1e-4) * 0.5)
    assert kl_warmup_beta(100, 100, 1e-4) == 1.0
    assert kl_warmup_beta(10_000, 100, 1e-4) == 1.0
    # beta reaches exactly 1 at the end of warm-up, which switches balancing off (it acts while beta < 1)
    kl = torch.tensor([[1.0, 3.0]])
    assert kl_objective(kl, kl_warmup_beta(100, 100), balance=True, group_sizes=torch.tensor([1, 9])) == 4.0
    assert kl_warmup_beta(0, 0) == 1.0  # warm-up off: the plain ELBO from the first step
    betas = [kl_warmup_beta(s, 10, 0.0) for s in range(12)]
    assert betas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0])


def test_defaults_give_exactly_the_elbo_kl():
    kl = torch.rand(8, 5) * 3  # (B, L)
    assert torch.allclose(kl_objective(kl), kl.sum(1).mean())
    assert torch.allclose(kl_objective(kl, beta=0.25), 0.25 * kl.sum(1).mean())


def test_free_bits_clamp_only_the_groups_below_the_threshold():
    kl = torch.tensor([[0.1, 2.0, 0.4], [0.3, 4.0, 0.8]], requires_grad=True)  # (B=2, L=3); means 0.2, 3.0, 0.6
    per_group = free_bits(kl, 0.5)
    assert torch.allclose(per_group, torch.tensor([0.5, 3.0, 0.6]))
    per_group.sum().backward()
    # The first group sits below 0.5 nats: no gradient pushes it further towards the prior.
    assert torch.equal(kl.grad[:, 0], torch.zeros(2))
    assert torch.allclose(kl.grad[:, 1:], torch.full((2, 2), 0.5))  # d mean / d element = 1 / B
    assert torch.allclose(free_bits(kl, 0.0), kl.mean(0))
    assert torch.allclose(kl_objective(kl, free_bits_threshold=0.5), torch.tensor(0.5 + 3.0 + 0.6))


def test_balancing_coefficients_by_hand():
    kl = torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # group means 2 and 4 nats
    sizes = torch.tensor([1, 2])  # the second group has twice the latent elements
    # gamma ∝ (mean KL + 0.01) / (size / min size): 2.01 / 1 and 4.01 / 2, then divided by their mean.
    raw = torch.tensor([2.01, 2.005])
    assert torch.allclose(kl_balance_coeffs(kl, sizes), raw / raw.mean())


def test_balancing_has_mean_one_and_favours_more_kl_per_element():
    torch.manual_seed(0)
    sizes = torch.tensor([16, 64, 256])
    kl_per_element = torch.tensor([0.5, 0.05, 0.2])
    kl = (kl_per_element * sizes) * (1 + 0.1 * torch.rand(32, 3))  # (B, L)
    gamma = kl_balance_coeffs(kl, sizes)
    assert gamma.mean() == pytest.approx(1.0)
    assert gamma.argsort().tolist() == [1, 2, 0]  # ordered as the KL per latent element
    # Equal KL per element: every coefficient is (nearly) 1.
    flat = kl_balance_coeffs((0.3 * sizes).expand(4, 3).float(), sizes)
    assert torch.allclose(flat, torch.ones(3), atol=2e-3)  # the +0.01 nats offset


def test_balancing_acts_only_during_warm_up_and_its_coefficients_are_detached():
    kl = torch.tensor([[1.0, 3.0], [3.0, 5.0]], requires_grad=True)
    sizes = torch.tensor([1, 2])
    assert torch.allclose(kl_objective(kl, 1.0, balance=True, group_sizes=sizes), kl.sum(1).mean())
    objective = kl_objective(kl, 0.5, balance=True, group_sizes=sizes)
    gamma = kl_balance_coeffs(kl, sizes)
    assert torch.allclose(objective, 0.5 * (gamma * kl.mean(0)).sum())
    objective.backward()
    assert torch.allclose(kl.grad, 0.5 * gamma.expand(2, 2) / 2)  # no gradient through gamma itself
