"""Our GPT and tokenizer as HuggingFace's GPT-2: a `transformers.GPT2LMHeadModel` and a `GPT2Tokenizer` with the
same logits and the same token ids. `minigpt export` writes them; `checkpoint.gpt_from_hf` is the way back in.

transformers is imported inside the functions: it is optional (`pip install 'minigpt[hf]'`).
"""

import tiktoken
import torch
from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN  # the pattern GPT2Tokenizer cuts with

from minigpt.checkpoint import CONV1D_WEIGHTS
from minigpt.errors import UserError
from minigpt.model import GPT
from minigpt.tokenizer import EOT


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "exporting to HuggingFace's format needs the transformers package: pip install 'minigpt[hf]'"
        ) from None
    return transformers


def hf_from_gpt(model: GPT, eot_token: int):
    """A `transformers.GPT2LMHeadModel` (eval mode, CPU, float32) computing the same logits as model.

    HF's GPT-2 has biases everywhere; a model trained with bias=False gets zero biases, which is exact. The
    vocabulary's padding rows (pad_vocab_multiple) are dropped: the model never returns their logits.
    """
    transformers = import_transformers()
    c = model.config
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu_new",  # GPT-2's tanh GELU, as our MLP's
        layer_norm_epsilon=1e-5, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        bos_token_id=eot_token, eos_token_id=eot_token, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):  # shapes only: every weight is assigned below (a random init took most of the time)
        hf_model = transformers.GPT2LMHeadModel(config)
    ours = {k: v.detach().float() for k, v in model.state_dict().items()}
    weights = {}
    for name, hf_value in hf_model.state_dict().items():
        if name in ours:
            value = ours[name]
            if name.endswith(CONV1D_WEIGHTS):
                value = value.t()  # Conv1D keeps (in, out), nn.Linear (out, in)
            elif name in ("transformer.wte.weight", "lm_head.weight"):
                value = value[: c.vocab_size]  # (padded vocab, C) -> (vocab, C)
        elif name.endswith(".bias") and not c.bias:
            value = torch.zeros(hf_value.shape)  # bias=False: no bias is a zero bias
        else:
            raise AssertionError(f"HF's GPT-2 has {name}, which our model lacks")  # a transformers change: a bug here
        weights[name] = value.contiguous()
    hf_model.load_state_dict(weights, assign=True)
    hf_model.tie_weights()  # one tensor for the token table and the head again, as assigning gave each its own
    hf_model.generation_config = transformers.GenerationConfig(
        bos_token_id=eot_token, eos_token_id=eot_token, pad_token_id=eot_token
    )
    return hf_model.eval()


# tiktoken has no public accessor for an encoding's ranks, pattern and special tokens: `_mergeable_ranks`, `_pat_str`
# and `_special_tokens` are the attributes its constructor keeps them in (as in tiktoken 0.7 to 0.14).
def vocab_and_merges(enc: tiktoken.Encoding) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocab.json and merges.txt contents for a tiktoken encoding: its ranks are the ids (tokens written in
    GPT-2's byte-to-unicode alphabet), its special tokens keep theirs. The merges are transformers' own extraction
    (`TikTokenConverter`): each token's splits into two tokens, in the order of the merged token's rank."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class RanksConverter(TikTokenConverter):  # the converter reads a ranks file; ours are in memory
        def load_tiktoken_bpe(self, _):
            return enc._mergeable_ranks

    vocab, merges = RanksConverter().extract_vocab_merges_from_model(None)
    return {**vocab, **enc._special_tokens}, merges


def hf_tokenizer(enc: tiktoken.Encoding, max_length: int):
    """transformers' `GPT2Tokenizer` giving the same ids as enc, built offline from enc's own ranks.

    GPT2Tokenizer cuts text with GPT-2's pattern before its merges: exact for encodings with that pattern (gpt2,
    p50k_base), and for those without merges (`bytes`: byte b is id b, `<|endoftext|>` 256), where any cut gives the
    same bytes. Other patterns (cl100k_base, o200k_base) are refused.
    """
    transformers = import_transformers()
    no_merges = all(len(token) == 1 for token in enc._mergeable_ranks)
    if enc._pat_str != GPT2_PATTERN and not no_merges:
        raise UserError(
            f"tokenizer {enc.name!r} cannot be exported yet: HF's GPT2Tokenizer splits text with GPT-2's pattern, not "
            f"{enc.name}'s; train with tokenizer gpt2 or bytes to export"
        )
    if set(enc._special_tokens) != {EOT}:
        raise UserError(
            f"tokenizer {enc.name!r} cannot be exported yet: it has special tokens other than {EOT} "
            f"({', '.join(sorted(set(enc._special_tokens) - {EOT}))})"
        )
    if int(transformers.__version__.split(".")[0]) < 5:  # GPT2Tokenizer built from memory is transformers 5's
        raise UserError(
            f"exporting a tokenizer needs transformers 5 (this is {transformers.__version__}): "
            "pip install -U 'transformers>=5' (the exported directory loads in transformers 4 too)"
        )
    vocab, merges = vocab_and_merges(enc)
    return transformers.GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token=EOT, bos_token=EOT, eos_token=EOT, model_max_length=max_length
    )
