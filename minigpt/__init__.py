"""minigpt: a small GPT, its causal multi-head attention pinned to reference outputs, trained with Lightning."""

from minigpt.attention import CausalSelfAttention, causal_mask, scaled_dot_product_attention
from minigpt.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "CausalSelfAttention", "causal_mask", "scaled_dot_product_attention"]
