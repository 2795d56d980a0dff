"""The attention layer pinned to the reference documents' printed outputs (../shared/reference/*.txt).

Each test names its document. Expected numbers are copied from the documents' printed output.
"""

import math

import pytest
import torch
from torch import nn

from minigpt.attention import CausalSelfAttention, causal_mask, scaled_dot_product_attention
from minigpt.inspect import layer_attention


# --- 000_c65f6fdd344fe90e.txt: simplified self-attention, Q = K = V = x, scaled by 1/sqrt(d_model) ----------
def test_doc000_seeded_input_scores_weights_output():
    """000_c65f6fdd344fe90e.txt: torch.manual_seed(42); x = torch.randn(1, 3, 4); Q = K = V = x."""
    torch.manual_seed(42)
    x = torch.randn(1, 3, 4)
    printed_x = torch.tensor(
        [[[0.3367, 0.1288, 0.2345, 0.2303], [-1.1229, -0.1863, 2.2082, -0.6380], [0.4617, 0.2674, 0.5349, 0.8094]]]
    )
    printed_scores = torch.tensor([[[0.2380, -0.0313, 0.5017], [-0.0313, 6.5787, 0.0966], [0.5017, 0.0966, 1.2258]]])
    printed_weights = torch.tensor([[[0.3317, 0.2899, 0.3784], [0.0341, 0.9295, 0.0364], [0.3074, 0.2511, 0.4415]]])
    printed_output = torch.tensor(
        [[[-0.0391, 0.0899, 0.9203, 0.1977], [-1.0154, -0.1591, 2.0800, -0.5557], [0.0254, 0.1109, 0.8626, 0.2680]]]
    )
    torch.testing.assert_close(x, printed_x, atol=1e-4, rtol=0)

    # The document prints the scores before scaling: scale = 1 gives them back as weights' logits.
    _, unscaled_weights = scaled_dot_product_attention(x, x, x, scale=1.0)
    torch.testing.assert_close(unscaled_weights, torch.softmax(printed_scores, dim=-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(x @ x.transpose(1, 2), printed_scores, atol=1e-4, rtol=0)

    out, weights = scaled_dot_product_attention(x, x, x)  # default scale 1/sqrt(4)
    torch.testing.assert_close(weights, printed_weights, atol=1e-4, rtol=0)
    torch.testing.assert_close(out, printed_output, atol=1e-4, rtol=0)


# --- 001_fd54cd086716005f.txt: "Your journey starts with one step", unscaled -----------------------------
JOURNEY = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your
        [0.55, 0.87, 0.66],  # journey
        [0.57, 0.85, 0.64],  # starts
        [0.22, 0.58, 0.33],  # with
        [0.77, 0.25, 0.10],  # one
        [0.05, 0.80, 0.55],  # step
    ]
)


def test_doc001_journey_scores_weights_contexts():
    """001_fd54cd086716005f.txt: scores = inputs @ inputs.T, softmax, contexts = weights @ inputs (scale 1)."""
    printed_scores = torch.tensor(
        [
            [0.9995, 0.9544, 0.9422, 0.4753, 0.4576, 0.6310],
            [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865],
            [0.9422, 1.4754, 1.4570, 0.8296, 0.7154, 1.0605],
            [0.4753, 0.8434, 0.8296, 0.4937, 0.3474, 0.6565],
            [0.4576, 0.7070, 0.7154, 0.3474, 0.6654, 0.2935],
            [0.6310, 1.0865, 1.0605, 0.6565, 0.2935, 0.9450],
        ]
    )
    printed_weights = torch.tensor(
        [
            [0.2098, 0.2006, 0.1981, 0.1242, 0.1220, 0.1452],
            [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581],
            [0.1390, 0.2369, 0.2326, 0.1242, 0.1108, 0.1565],
            [0.1435, 0.2074, 0.2046, 0.1462, 0.1263, 0.1720],
            [0.1526, 0.1958, 0.1975, 0.1367, 0.1879, 0.1295],
            [0.1385, 0.2184, 0.2128, 0.1420, 0.0988, 0.1896],
        ]
    )
    expected_contexts = torch.tensor(
        [
            [0.4421, 0.5931, 0.5790],
            [0.4419, 0.6515, 0.5683],
            [0.4431, 0.6496, 0.5671],
            [0.4304, 0.6298, 0.5510],
            [0.4671, 0.5910, 0.5266],
            [0.4177, 0.6503, 0.5645],
        ]
    )
    torch.testing.assert_close(JOURNEY @ JOURNEY.T, printed_scores, atol=1e-4, rtol=0)
    contexts, weights = scaled_dot_product_attention(JOURNEY, JOURNEY, JOURNEY, scale=1.0)
    torch.testing.assert_close(weights, printed_weights, atol=1e-4, rtol=0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(6))
    torch.testing.assert_close(contexts, expected_contexts, atol=1e-4, rtol=0)


# --- 002_be279ca00808bb34.txt: create_causal_mask and the masked weights' structure ----------------------
def test_doc002_causal_mask_equals_printed_mask():
    """002_be279ca00808bb34.txt: create_causal_mask(5) = (triu(ones, diagonal=1) == 0)."""
    printed_mask = torch.tensor(
        [
            [True, False, False, False, False],
            [True, True, False, False, False],
            [True, True, True, False, False],
            [True, True, True, True, False],
            [True, True, True, True, True],
        ]
    )
    mask = causal_mask(5)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, printed_mask)
    assert torch.equal(mask, torch.triu(torch.ones(5, 5), diagonal=1) == 0)  # the document's construction


def test_doc002_masked_weights_structure():
    """002_be279ca00808bb34.txt: weights_with_mask: first row one-hot, exact zeros above the diagonal, rows sum to 1."""
    torch.manual_seed(0)
    x = torch.rand(2, 5, 5)  # the document's batch_size=2, seq_len=5, embed_dim=5
    _, weights = scaled_dot_product_attention(x, x, x, mask=causal_mask(5))
    assert torch.equal(weights[:, 0], torch.tensor([1.0, 0, 0, 0, 0]).expand(2, 5))
    above = ~causal_mask(5)
    assert torch.all(weights[:, above] == 0.0)  # exactly zero, not just small
    assert torch.all(weights[:, ~above] > 0.0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 5))


class Doc002MultiHeadAttention(nn.Module):
    """002_be279ca00808bb34.txt's Multi_Head_Attention, transcribed: note `self.scale = math.sqrt(embed_dim)`."""

    def __init__(self, embed_dim, nums_heads):
        super().__init__()
        self.embed_dim, self.nums_heads, self.head_dim = embed_dim, nums_heads, embed_dim // nums_heads
        self.WQ, self.WK, self.WV, self.fc = (nn.Linear(embed_dim, embed_dim) for _ in range(4))
        self.scale = math.sqrt(embed_dim)

    def forward(self, x, mask=None):
        B, T, C = x.shape
        Q = self.WQ(x).view(B, T, self.nums_heads, self.head_dim).transpose(1, 2)
        K = self.WK(x).view(B, T, self.nums_heads, self.head_dim).transpose(1, 2)
        V = self.WV(x).view(B, T, self.nums_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(Q, K.transpose(-1, -2)) / self.scale
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, -1)
        out = torch.matmul(weights, V).transpose(1, 2).contiguous().view(B, T, C)
        return self.fc(out), weights


def load_separate_projections(layer: CausalSelfAttention, wq: nn.Linear, wk: nn.Linear, wv: nn.Linear, out: nn.Linear):
    """Copy separate Q, K, V and output linears into the fused c_attn (q|k|v order) and c_proj."""
    with torch.no_grad():
        layer.c_attn.weight.copy_(torch.cat([wq.weight, wk.weight, wv.weight], dim=0))
        layer.c_attn.bias.copy_(torch.cat([wq.bias, wk.bias, wv.bias], dim=0))
        layer.c_proj.weight.copy_(out.weight)
        layer.c_proj.bias.copy_(out.bias)


def test_doc002_multihead_scale_differs_sqrt_embed_dim_vs_sqrt_head_dim():
    """002_be279ca00808bb34.txt divides multi-head scores by sqrt(embed_dim); we divide by sqrt(head_dim).

    Its own single-head SelfAttention and Vaswani et al. use sqrt(d_k), the per-head key size. With the
    document's scale the outputs differ from ours; with sqrt(head_dim) they are the same.
    """
    torch.manual_seed(1)
    embed_dim, heads = 6, 3  # the document's test sizes
    doc = Doc002MultiHeadAttention(embed_dim, heads)
    ours = CausalSelfAttention(embed_dim, heads)
    load_separate_projections(ours, doc.WQ, doc.WK, doc.WV, doc.fc)
    x = torch.randn(2, 5, embed_dim)
    mask = causal_mask(5)

    doc_out, doc_weights = doc(x, mask)
    our_out, our_weights = layer_attention(ours, x)
    assert doc.scale == math.sqrt(embed_dim) != math.sqrt(embed_dim // heads)
    assert not torch.allclose(doc_out, our_out, atol=1e-3)
    assert not torch.allclose(doc_weights, our_weights, atol=1e-3)

    doc.scale = math.sqrt(doc.head_dim)
    doc_out, doc_weights = doc(x, mask)
    torch.testing.assert_close(our_out, doc_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(our_weights, doc_weights, atol=1e-6, rtol=0)


# --- 003_a7ddc95014d0f47f.txt: split_heads / combine_heads with separate linears ---------------------------
def doc003_split_heads(tensor, num_heads):
    batch_size, seq_len, feature_dim = tensor.size()
    head_dim = feature_dim // num_heads
    return tensor.view(batch_size, seq_len, num_heads, head_dim).transpose(1, 2)


def doc003_combine_heads(tensor):
    batch_size, num_heads, seq_len, head_dim = tensor.size()
    return tensor.transpose(1, 2).contiguous().view(batch_size, seq_len, num_heads * head_dim)


@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (3, 7, 12, 4)])  # (B, T, C, nh); the first is the document's
def test_doc003_split_combine_heads_matches_fused_layer(shape):
    """003_a7ddc95014d0f47f.txt: its procedure (linear_q/k/v, split_heads, Q·Kᵀ/sqrt(head_dim), softmax,
    combine_heads, output linear), plus the causal mask, equals CausalSelfAttention with those weights."""
    B, T, C, nh = shape
    torch.manual_seed(3)
    linear_q, linear_k, linear_v, linear = (nn.Linear(C, C) for _ in range(4))
    x = torch.randn(B, T, C)

    Q = doc003_split_heads(linear_q(x), nh)
    K = doc003_split_heads(linear_k(x), nh)
    V = doc003_split_heads(linear_v(x), nh)
    raw_weights = torch.matmul(Q, K.transpose(-1, -2))
    scaled_weights = raw_weights / (Q.size(-1) ** 0.5)
    scaled_weights = scaled_weights.masked_fill(~causal_mask(T), float("-inf"))
    attn_weights = torch.softmax(scaled_weights, dim=-1)
    expected = linear(doc003_combine_heads(torch.matmul(attn_weights, V)))

    layer = CausalSelfAttention(C, nh)
    load_separate_projections(layer, linear_q, linear_k, linear_v, linear)
    with torch.no_grad():
        y_fast = layer(x)
        y_plain, weights = layer_attention(layer, x)
    torch.testing.assert_close(y_fast, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(y_plain, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, attn_weights, atol=1e-6, rtol=0)


# --- 004_d39cc10f1a0a6c95.txt: fixed x and weight matrices, unscaled -------------------------------------
DOC004_X = torch.tensor([[1, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]], dtype=torch.float32)
DOC004_W_KEY = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float32)
DOC004_W_QUERY = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float32)
DOC004_W_VALUE = torch.tensor([[0, 2, 0], [0, 3, 0], [1, 0, 3], [1, 1, 0]], dtype=torch.float32)


def test_doc004_scores_softmax_and_outputs():
    """004_d39cc10f1a0a6c95.txt: q = x W_q, k = x W_k, v = x W_v; scores q kᵀ; z_i = Σ_j α_ij v_j."""
    q, k, v = DOC004_X @ DOC004_W_QUERY, DOC004_X @ DOC004_W_KEY, DOC004_X @ DOC004_W_VALUE
    scores = torch.tensor([[2.0, 4, 4], [4, 16, 12], [4, 12, 10]])
    torch.testing.assert_close(q @ k.T, scores)

    out, weights = scaled_dot_product_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1))
    expected = torch.tensor([[1.9366, 6.6831, 1.5951], [2.0000, 7.9640, 0.0540], [1.9997, 7.7599, 0.3584]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # The formula, term by term: z_i = sum_j alpha_ij v_j.
    z = torch.stack([sum(weights[i, j] * v[j] for j in range(3)) for i in range(3)])
    torch.testing.assert_close(out, z)


def test_doc004_last_lines_sum_over_wrong_axis():
    """004_d39cc10f1a0a6c95.txt's last two code lines,
    `weight_values = v[:, None] * att_score_softmax[:, :, None]; outputs = weight_values.sum(dim=0)`,
    compute weightsᵀ·V (out_j = Σ_i α_ij v_i), not the z_i = Σ_j α_ij v_j its text states. Ours follows the formula.
    """
    q, k, v = DOC004_X @ DOC004_W_QUERY, DOC004_X @ DOC004_W_KEY, DOC004_X @ DOC004_W_VALUE
    out, weights = scaled_dot_product_attention(q, k, v, scale=1.0)

    weight_values = v[:, None] * weights[:, :, None]  # (3, 3, 3): [i, j] = alpha_ij * v_i
    doc_outputs = weight_values.sum(dim=0)
    torch.testing.assert_close(doc_outputs, weights.T @ v)
    assert not torch.allclose(doc_outputs, out, atol=1e-2)
    torch.testing.assert_close(out, weights @ v)


# --- properties on fresh random inputs -------------------------------------------------------------------
def test_function_accepts_any_leading_batch_dims():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 6, 8), torch.randn(2, 3, 4, 6, 7)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 4, 5, 7) and weights.shape == (2, 3, 4, 5, 6)
    flat_out, _ = scaled_dot_product_attention(q.reshape(-1, 5, 8), k.reshape(-1, 6, 8), v.reshape(-1, 6, 7))
    torch.testing.assert_close(out.reshape(-1, 5, 7), flat_out)


@pytest.mark.parametrize("B,T,C,nh", [(1, 1, 8, 2), (2, 17, 32, 4), (3, 64, 48, 6)])
def test_sdpa_path_equals_weights_path(B, T, C, nh):
    torch.manual_seed(T)
    layer = CausalSelfAttention(C, nh).eval()
    x = torch.randn(B, T, C)
    with torch.no_grad():
        y_fast = layer(x)
        y_plain, weights = layer_attention(layer, x)
    assert weights.shape == (B, nh, T, T)
    torch.testing.assert_close(y_fast, y_plain, atol=1e-5, rtol=1e-5)


def test_weights_zero_above_diagonal_and_rows_sum_to_one():
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4)
    _, weights = layer_attention(layer, torch.randn(2, 12, 32))
    assert torch.all(weights.triu(diagonal=1) == 0.0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 4, 12))


@pytest.mark.parametrize("with_weights", [False, True])
def test_layer_is_causal(with_weights):
    """Changing tokens after position t leaves outputs at positions <= t unchanged (the layer, and the layer run with
    the documents' attention, which returns its weights too)."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4).eval()
    x = torch.randn(2, 10, 32)
    t = 4
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(2, 10 - t - 1, 32)
    with torch.no_grad():
        run = (lambda x: layer_attention(layer, x)) if with_weights else layer
        y1 = run(x)
        y2 = run(x2)
    if with_weights:
        y1, y2 = y1[0], y2[0]
    torch.testing.assert_close(y1[:, : t + 1], y2[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(y1[:, t + 1 :], y2[:, t + 1 :])


def test_n_embd_not_divisible_by_n_head_names_both_numbers():
    with pytest.raises(ValueError, match=r"n_embd=10.*n_head=3"):
        CausalSelfAttention(10, 3)
