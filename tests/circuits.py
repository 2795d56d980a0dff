"""GPTs with hand-made weights whose heads do one known thing each, for the ablation and probe tests.

Every model here reads 16 token ids (vocabulary 16) at 16 positions, 64 wide: residual dimensions 0-15 hold the
token (one-hot), 16-31 the position, 32-47 what a previous-token head writes (the token before). Each layer has 2
heads of 32 dimensions; a head not given a job is dead (all its weights 0, so its output is exactly 0). MLPs are
dead too, and every bias is 0. Queries match keys through one-hot codes scaled by SHARP, so attention is all but
one-hot where a key matches; a head that copies writes its token with gain COPY, which the LayerNorms turn into a
confident prediction.
"""

import torch

from minigpt.model import GPT, GPTConfig

V, T, C, HS = 16, 16, 64, 32
TOKEN, POSITION, PREVIOUS = 0, 16, 32  # first residual dimension of each subspace
SHARP, COPY = 4.0, 30.0


def blank_model(n_layer: int) -> GPT:
    """A GPT of this module's shape with every weight 0 but the embeddings and the LayerNorm gains."""
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=n_layer, n_head=C // HS, n_embd=C))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.zero_()
        model.transformer.wte.weight[:, TOKEN : TOKEN + V] = torch.eye(V)  # also the LM head (tied)
        model.transformer.wpe.weight[:, POSITION : POSITION + T] = torch.eye(T)
    return model.eval()


def attend_by_offset(model: GPT, layer: int, head: int, offset: int) -> None:
    """Head (layer, head) attends from position p to the key at p - offset (by the position code)."""
    attn, q0, k0 = model.transformer.h[layer].attn, head * HS, C + head * HS
    with torch.no_grad():
        for p in range(T):
            attn.c_attn.weight[q0 + p, POSITION + p] = SHARP  # query p lights dimension p
            if p + offset < HS:
                attn.c_attn.weight[k0 + p + offset, POSITION + p] = SHARP  # key k lights k + offset


def attend_to_previous_copy(model: GPT, layer: int, head: int) -> None:
    """Head (layer, head) attends from a token to the keys whose previous token (dims PREVIOUS..) is the same."""
    attn, q0, k0 = model.transformer.h[layer].attn, head * HS, C + head * HS
    with torch.no_grad():
        for t in range(V):
            attn.c_attn.weight[q0 + t, TOKEN + t] = SHARP
            attn.c_attn.weight[k0 + t, PREVIOUS + t] = SHARP


def copy_token(model: GPT, layer: int, head: int, to: int, gain: float = COPY) -> None:
    """Head (layer, head) moves the token of the key it attends to into residual dimensions to.. (times gain)."""
    attn, v0 = model.transformer.h[layer].attn, 2 * C + head * HS
    with torch.no_grad():
        for t in range(V):
            attn.c_attn.weight[v0 + t, TOKEN + t] = 1.0
            attn.c_proj.weight[to + t, head * HS + t] = gain


def fixed_distance_model(n: int) -> GPT:
    """One layer; head 0 copies the token n - 1 back: on n random tokens shown twice it predicts every token of
    the second half after its first, as an induction head would, and at any other length it predicts wrong."""
    model = blank_model(n_layer=1)
    attend_by_offset(model, 0, 0, offset=n - 1)
    copy_token(model, 0, 0, to=TOKEN)
    return model


def induction_model() -> GPT:
    """Two layers: head 0.0 writes the previous token (dims PREVIOUS..); head 1.0 attends to the key whose
    previous token is the query's token, the token after its earlier copy, and copies it: induction, any length."""
    model = blank_model(n_layer=2)
    attend_by_offset(model, 0, 0, offset=1)
    copy_token(model, 0, 0, to=PREVIOUS, gain=0.2)  # about as large as the token's code
    attend_to_previous_copy(model, 1, 0)
    copy_token(model, 1, 0, to=TOKEN)
    return model
