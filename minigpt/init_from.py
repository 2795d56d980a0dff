"""Training that starts from pretrained weights (`--model.init_from`): the run's settings made those of the weights,
and the weights copied into the new model.

As in nanoGPT, the shape comes from the weights: n_layer, n_head, n_embd and bias are theirs, block_size may be
smaller (the position table is cropped), dropout and pad_vocab_multiple are the run's own, and the tokenizer (so the
vocabulary) is theirs. A setting left at its default takes the weights' value; one set to another value is refused.
"""

from jsonargparse import Namespace

from minigpt.data import DataConfig
from minigpt.errors import UserError
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import get_tokenizer

WEIGHTS_SHAPE = ("n_layer", "n_head", "n_embd", "bias")  # what the weights fix exactly


def settle_settings(config: Namespace, weights: GPTConfig, tokenizer: str) -> None:
    """Set the parsed config's model shape and data tokenizer to the weights'; a contradiction is a UserError
    naming both values. config.yaml, written from config, then records the shape actually trained."""
    source, model, defaults = config.model.init_from, config.model, GPTConfig()
    for name in WEIGHTS_SHAPE:
        given, theirs = getattr(model, name), getattr(weights, name)
        if given != getattr(defaults, name) and given != theirs:
            raise UserError(
                f"model.{name}={given} contradicts the weights of {source} ({name}={theirs}): leave it unset"
            )
        setattr(model, name, theirs)
    if model.block_size == defaults.block_size:
        model.block_size = weights.block_size
    elif model.block_size > weights.block_size:
        raise UserError(
            f"model.block_size={model.block_size} is longer than the position table of {source} "
            f"(block_size={weights.block_size}): give at most {weights.block_size}, or leave it unset"
        )
    config.data.block_size = model.block_size  # the link from model.block_size was applied at parse time
    if config.data.tokenizer not in (DataConfig.tokenizer, tokenizer):
        raise UserError(
            f"data.tokenizer={config.data.tokenizer} contradicts the weights of {source} (tokenizer {tokenizer}): "
            "leave it unset, the weights' own is used"
        )
    config.data.tokenizer = tokenizer
    if get_tokenizer(tokenizer).n_vocab != weights.vocab_size:
        raise UserError(
            f"the weights of {source} cover {weights.vocab_size} token ids but their tokenizer {tokenizer} has "
            f"{get_tokenizer(tokenizer).n_vocab}: they cannot be trained on its tokens"
        )


def copy_weights(model: GPT, weights: GPT) -> None:
    """weights' parameters into model (of the settled shape): the position table cropped to model's block_size, the
    vocabulary's padding rows (if model has them) left as initialised: no token id ever selects them."""
    c = model.config
    state = weights.state_dict()
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: c.block_size]  # (block_size, C)
    token_table = model.transformer.wte.weight.detach().clone()  # (padded vocab, C)
    token_table[: c.vocab_size] = state["transformer.wte.weight"][: c.vocab_size]
    state["transformer.wte.weight"] = state["lm_head.weight"] = token_table  # tied
    model.load_state_dict(state)
