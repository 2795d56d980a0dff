"""Head ablation (the rise of the induction loss with one head zeroed) against hooks and hand-made circuits, and
the probes of three lengths that a head keyed on one distance cannot fool."""

import pytest
import torch

from minigpt.inspect import InductionProbes, head_ablation, head_scores, induction_loss, repeated_random_tokens
from minigpt.model import GPT, GPTConfig
from tests.circuits import V, fixed_distance_model, induction_model

LENGTHS = (5, 6, 8)


def zeroing_head(model: GPT, layer: int, head: int):
    """A hook on layer's c_proj that zeroes head's slice of its input: zero-ablation done by hand, for comparison."""
    hs = model.config.n_embd // model.config.n_head

    def hook(module, args):
        (z,) = args  # (B, T, C): the heads side by side
        z = z.clone()
        z[..., head * hs : (head + 1) * hs] = 0
        return (z,)

    return model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(hook)


def hooked_ablation(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head): induction_loss with each head zeroed by a hook, one whole forward per head, minus clean."""
    clean = induction_loss(model, tokens)
    rises = torch.zeros(model.config.n_layer, model.config.n_head)
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            handle = zeroing_head(model, layer, head)
            rises[layer, head] = induction_loss(model, tokens) - clean
            handle.remove()
    return rises


def test_head_ablation_equals_zero_ablation_done_with_hooks():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=24, n_layer=3, n_head=4, n_embd=32))
    with torch.no_grad():  # weights large enough for every head to matter: rises of a few tenths of a nat
        for param in model.parameters():
            param.mul_(8)
    tokens = repeated_random_tokens(torch.arange(50), 12, count=5, seed=3)  # (5, 24)
    model.train()
    rises = head_ablation(model, tokens)
    assert model.training and not rises.requires_grad  # eval mode, no gradients; the mode comes back
    assert rises.shape == (3, 4) and rises.abs().min() > 1e-3  # every head does something here
    torch.testing.assert_close(rises, hooked_ablation(model, tokens), atol=1e-5, rtol=1e-4)
    for block in model.transformer.h:
        assert not block.attn.c_proj._forward_pre_hooks  # the ablation's hooks are gone


@pytest.mark.parametrize("n", LENGTHS)
def test_zeroing_either_head_of_an_induction_circuit_breaks_it_and_a_dead_head_changes_nothing(n):
    model = induction_model()  # 0.0: previous token; 1.0: induction; 0.1 and 1.1: dead
    tokens = repeated_random_tokens(torch.arange(V), n, count=8)
    assert induction_loss(model, tokens) < 0.25  # it predicts the second halves
    rises = head_ablation(model, tokens)
    assert rises[0, 0] > 3 and rises[1, 0] > 4  # without either head it guesses: ln(16) = 2.8 nats and worse
    assert rises[:, 1].abs().max() < 1e-5  # a head whose output is 0 already


def test_a_fixed_distance_head_matters_at_its_length_only():
    model = fixed_distance_model(6)  # 0.0 copies the token 5 back: induction's key on 6 tokens shown twice
    at_its_length = repeated_random_tokens(torch.arange(V), 6, count=8)
    assert induction_loss(model, at_its_length) < 0.01
    assert head_ablation(model, at_its_length)[0, 0] > 4
    for n in (5, 8):  # elsewhere it copies the wrong token: zeroing it lowers the loss
        assert head_ablation(model, repeated_random_tokens(torch.arange(V), n, count=8))[0, 0] < -1


# --- probes of three lengths -------------------------------------------------------------------------------
def test_a_fixed_distance_head_scores_as_induction_at_one_length_and_not_on_the_mix():
    probes = InductionProbes.draw(torch.arange(V), longest=8, count=8, seed=0)
    assert probes.lengths == (8, 6, 4)
    faker, real = fixed_distance_model(8), induction_model()  # faker: head 0.0; real: head 1.0
    at_one_length = head_scores(faker, probes.sequences[0][0])["induction"][0, 0]
    assert at_one_length == pytest.approx(0.5, abs=1e-3)  # a perfect induction head's score on that probe
    assert probes.head_scores(faker)["induction"][0, 0] < 0.25
    assert probes.head_scores(real)["induction"][1, 0] > 0.4  # the real pattern stays high at every length
    assert induction_loss(faker, probes.sequences[0]) < 0.01 < 3 < probes.induction_loss(faker)
    assert probes.induction_loss(real) < 0.25
    # The mixed ablation is the mean of each length's.
    per_length = torch.stack([head_ablation(real, tokens) for tokens in probes.sequences])
    torch.testing.assert_close(probes.head_ablation(real), per_length.mean(dim=0))
