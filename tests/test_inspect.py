"""Head scores on hand-built attention patterns, the probes of repeated random tokens, the induction loss."""

import pytest
import torch
import torch.nn.functional as F

from minigpt.inspect import (
    SCORES,
    detection_patterns,
    forward_with_attention,
    head_scores,
    induction_loss,
    pattern_scores,
    probe_attention,
    probe_lengths,
    repeated_random_tokens,
)
from minigpt.model import GPT, GPTConfig


def one_hot_rows(keys: list[int]) -> torch.Tensor:
    """A head's (T, T) weights: query q puts all its attention on key keys[q]."""
    return F.one_hot(torch.tensor(keys), len(keys)).float()


def scores_of(heads: list[torch.Tensor], ids: list[int]) -> dict[str, list[float]]:
    """The scores of hand-built heads (one layer), name -> one value per head."""
    scores = pattern_scores([torch.stack(heads)], torch.tensor(ids))  # name -> (1, len(heads))
    return {name: values[0].tolist() for name, values in scores.items()}


# --- the definitions, on hand-built heads ----------------------------------------------------------------
def test_heads_that_do_exactly_one_thing_score_as_the_definitions_say():
    ids = [5, 6, 7, 5, 6, 7]  # three tokens shown twice: the second half's queries each have one earlier twin
    heads = [
        one_hot_rows([0, 0, 1, 2, 3, 4]),  # previous token (query 0 can only attend to itself)
        one_hot_rows([0, 1, 2, 0, 1, 2]),  # duplicate: the second half on its earlier twin, the first on itself
        one_hot_rows([0, 0, 0, 1, 2, 3]),  # induction: the second half on the token after its twin
        one_hot_rows([0, 1, 2, 3, 4, 5]),  # itself
        one_hot_rows([0, 0, 0, 0, 0, 0]),  # the first token
    ]
    scores = scores_of(heads, ids)
    # The share of all 6 rows' attention on the pattern's cells; query 1 -> key 0 is also a previous-token cell.
    assert scores["previous_token"] == pytest.approx([5 / 6, 0, 1 / 6, 0, 1 / 6])
    assert scores["duplicate_token"] == pytest.approx([0, 3 / 6, 0, 0, 1 / 6])
    assert scores["induction"] == pytest.approx([0, 0, 3 / 6, 0, 0])


def test_neither_the_first_token_nor_the_diagonal_is_left_out():
    # A token repeated: every earlier key is a duplicate, and the key after a duplicate can be the query itself.
    ids = [9, 9, 9]
    itself, first = one_hot_rows([0, 1, 2]), one_hot_rows([0, 0, 0])
    scores = scores_of([itself, first], ids)
    assert scores["induction"] == pytest.approx([2 / 3, 0])  # (1, 1) and (2, 2): after the twin at 0 and at 1
    assert scores["duplicate_token"] == pytest.approx([0, 2 / 3])  # (1, 0) and (2, 0)
    assert scores["previous_token"] == pytest.approx([0, 1 / 3])  # (1, 0)


def test_spread_attention_scores_the_share_on_the_cells():
    ids = [1, 2, 3, 1, 2, 3]
    T = len(ids)
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]  # query q spreads over q + 1 keys
    scores = scores_of([uniform], ids)
    assert scores["previous_token"] == pytest.approx([sum(1 / (q + 1) for q in range(1, T)) / T])
    second_half = sum(1 / (q + 1) for q in range(3, T)) / T  # one duplicate and one induction key per query
    assert scores["duplicate_token"] == pytest.approx([second_half])
    assert scores["induction"] == pytest.approx([second_half])


def test_patterns_match_their_definitions_cell_by_cell():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = torch.randint(0, 4, (int(torch.randint(2, 20, (1,), generator=generator)),), generator=generator)
        t = ids.tolist()
        patterns = detection_patterns(ids)
        for q in range(len(t)):
            for k in range(len(t)):
                assert patterns["previous_token"][q, k] == (k == q - 1)
                assert patterns["duplicate_token"][q, k] == (k < q and t[k] == t[q])
                # The token after an earlier occurrence of the query's: key k follows key k - 1 holding q's token.
                assert patterns["induction"][q, k] == (1 <= k <= q and t[k - 1] == t[q])


def test_scores_are_shares_of_the_whole_attention():
    ids = torch.tensor([4, 8, 4, 8, 4])
    weights = torch.rand(3, 5, 5).tril()  # (nh, T, T), rows not normalised: divided by their total, as TL does
    scores = pattern_scores([weights, weights.softmax(-1)], ids)
    for name, pattern in detection_patterns(ids).items():
        assert scores[name].shape == (2, 3)
        torch.testing.assert_close(scores[name][0], (weights * pattern).sum((1, 2)) / weights.sum((1, 2)))
    with pytest.raises(ValueError, match="attention over 5 tokens, but 4 token ids"):
        pattern_scores([weights], ids[:4])


# --- on a model ------------------------------------------------------------------------------------------
@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=3, n_embd=24))


def test_head_scores_are_the_definitions_on_the_models_own_attention(model):
    ids = repeated_random_tokens(torch.arange(50), 8)[0]  # (16,)
    scores = head_scores(model, ids)
    assert list(scores) == list(SCORES)
    with torch.no_grad():
        _, attentions = forward_with_attention(model.eval(), ids[None])  # per layer (1, nh, T, T)
    for name, values in pattern_scores([w[0] for w in attentions], ids).items():
        assert scores[name].shape == (2, 3) and scores[name].dtype == torch.float32
        torch.testing.assert_close(scores[name], values)
        assert ((0 <= scores[name]) & (scores[name] <= 1)).all()
    assert probe_attention(model, ids.tolist())[0].shape == (3, 16, 16)
    for bad in (ids[None], ids[:1]):
        with pytest.raises(ValueError, match="1-D tensor of at least 2 token ids"):
            head_scores(model, bad)


def test_repeated_random_tokens_are_seeded_distinct_and_shown_twice():
    candidates = torch.tensor([3, 10, 11, 40, 41, 42, 99])
    state = torch.get_rng_state()
    tokens = repeated_random_tokens(candidates, 5, count=4, seed=7)  # (4, 10)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: training's random stream is untouched
    assert tokens.shape == (4, 10) and torch.equal(tokens[:, :5], tokens[:, 5:])
    assert all(len(set(row[:5].tolist())) == 5 and set(row.tolist()) <= set(candidates.tolist()) for row in tokens)
    assert len({tuple(row.tolist()) for row in tokens}) == 4
    assert torch.equal(tokens, repeated_random_tokens(candidates, 5, count=4, seed=7))
    assert not torch.equal(tokens, repeated_random_tokens(candidates, 5, count=4, seed=8))
    for n in (2, 8):
        with pytest.raises(ValueError, match=f"n_tokens={n} must lie in \\[3, 7\\]"):
            repeated_random_tokens(candidates, n)


def test_weighted_draws_follow_the_weights_and_never_pick_a_weightless_token():
    candidates = torch.arange(6)
    weights = torch.tensor([0.0, 1, 1, 1, 1, 20])  # token 5 twenty times as often as 1-4 at each draw
    tokens = repeated_random_tokens(candidates, 3, count=400, seed=0, weights=weights)  # (400, 6)
    counts = torch.bincount(tokens[:, :3].flatten(), minlength=6)
    assert counts[0] == 0 and counts[5] > 380  # in nearly every sequence
    assert all(len(set(row[:3].tolist())) == 3 for row in tokens)  # still distinct within a sequence


def test_probe_lengths_are_three_from_about_half_the_longest_up():
    assert probe_lengths(32) == (32, 24, 16)
    assert probe_lengths(5) == (5, 4, 3)
    assert probe_lengths(6) == (6, 4, 3)
    with pytest.raises(ValueError, match="at least 5 tokens, got 4"):
        probe_lengths(4)


def test_induction_loss_is_the_mean_loss_on_the_second_halves_after_their_first_token(model):
    tokens = repeated_random_tokens(torch.arange(50), 6, count=3)  # (3, 12)
    model.train()
    loss = induction_loss(model, tokens)
    assert model.training and not loss.requires_grad  # eval mode, no gradients, and the mode comes back
    logits, _ = model(tokens[:, :-1])  # (3, 11, vocab): position j predicts token j + 1
    # Tokens 7..11 (the second half but its first), predicted at positions 6..10.
    expected = F.cross_entropy(logits[:, 6:].reshape(-1, 50), tokens[:, 7:].reshape(-1))
    torch.testing.assert_close(loss, expected)
