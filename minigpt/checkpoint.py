"""Where a GPT to sample from or inspect comes from: our training checkpoints, or GPT-2 weights via `transformers`.

Training writes `runs/<run>/checkpoints/{best,last}.ckpt`: Lightning checkpoints whose `state_dict` holds the GPT
under `model.` and whose `minigpt` entry holds the model config and tokenizer name, in plain types, so they load
with `torch.load(weights_only=True)`. `transformers` is optional (`pip install 'minigpt[hf]'`); it is imported
only to load GPT-2.
"""

import json
import logging
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from minigpt.errors import UserError, one_line
from minigpt.model import GPT, GPTConfig

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # in order of preference within a run
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# transformers' GPT-2 uses Conv1D layers, which store weights as (in, out); nn.Linear's are (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def find_checkpoint(runs_dir: str | Path = "runs") -> Path:
    """The newest run's best.ckpt, else its last.ckpt; the newest run is the one whose checkpoints are newest."""
    runs_dir = Path(runs_dir)
    written = [p for p in runs_dir.glob("*/checkpoints/*.ckpt") if p.name in CHECKPOINT_NAMES and p.is_file()]
    if not written:
        raise UserError(f"no checkpoint under {runs_dir}/: train one with `minigpt train` or pass --ckpt PATH")
    newest_run = max(written, key=lambda p: p.stat().st_mtime).parent
    return next(newest_run / name for name in CHECKPOINT_NAMES if (newest_run / name).is_file())


def load_checkpoint(path: str | Path) -> tuple[GPT, str]:
    """(model in eval mode on the CPU, tokenizer name) from a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass the path of a .ckpt file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch.load's own errors here are cryptic
        raise UserError(f"checkpoint {path} is truncated or not a torch checkpoint (no complete zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise UserError(
            f"checkpoint {path} holds Python objects that torch.load(weights_only=True) does not load"
            f"{f' ({refused[1]})' if refused else ''}: a checkpoint may hold only tensors and plain types"
        ) from None
    except Exception as e:  # torch reports damaged archives in many types: RuntimeError, OSError, EOFError, ...
        raise UserError(f"checkpoint {path} cannot be read by torch.load: {one_line(e)}") from None
    meta = ckpt.get("minigpt") if isinstance(ckpt, dict) else None
    state_dict = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not (isinstance(meta, dict) and {"model_config", "tokenizer"} <= meta.keys() and isinstance(state_dict, dict)):
        raise UserError(
            f"checkpoint {path} is not a minigpt checkpoint: it lacks 'state_dict' or 'minigpt' "
            "(model_config, tokenizer), which train.py writes"
        )
    try:
        model = GPT(GPTConfig(**meta["model_config"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"checkpoint {path} has an unusable model_config: {e}") from None
    weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path}: its weights do not fit its model_config: {one_line(e)}") from None
    return model.eval(), meta["tokenizer"]


def load_gpt2(name: str = "gpt2") -> tuple[GPT, str]:
    """(model in eval mode on the CPU, tokenizer name) with OpenAI's GPT-2 weights from the HuggingFace hub.

    The local HuggingFace cache is tried first, so a cached model loads with no network.
    """
    if name not in GPT2_NAMES:
        raise UserError(f"unknown GPT-2 model {name!r}: pick one of {', '.join(GPT2_NAMES)}")
    try:
        from huggingface_hub import constants
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise UserError(
            "loading GPT-2 weights needs the transformers package: pip install 'minigpt[hf]' (or the dev extra)"
        ) from None
    try:
        with no_progress_bars():
            hf_model = GPT2LMHeadModel.from_pretrained(name, local_files_only=True)
    except OSError:
        if constants.HF_HUB_OFFLINE:
            raise UserError(
                f"GPT-2 weights {name!r} are not in the HuggingFace cache ({constants.HF_HUB_CACHE}) and "
                "HF_HUB_OFFLINE is set: download them once with network, point HF_HOME at a cache holding them, "
                "or use a checkpoint with --ckpt"
            ) from None
        hf_model = _download_gpt2(GPT2LMHeadModel, name)
    return gpt_from_hf(hf_model), "gpt2"


def load_model(ckpt: str | Path | None, init_from: str | None, runs_dir: str | Path = "runs") -> tuple[GPT, str, str]:
    """(model in eval mode on the CPU, tokenizer name, where it came from) for `--ckpt`, `--init-from` or, with
    neither, the newest run under runs_dir: what `minigpt sample` and `minigpt attention` read."""
    if init_from is not None:
        return *load_gpt2(init_from), init_from
    path = ckpt or find_checkpoint(runs_dir)
    return *load_checkpoint(path), str(path)


@contextmanager
def no_progress_bars():
    """transformers' progress bars off for the block: loading and saving a model are not worth a bar's lines on
    stderr, where an error must be the only line."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_hf_directory(path: str | Path) -> tuple[GPT, str]:
    """(model in eval mode on the CPU, "gpt2") from a local HuggingFace GPT-2 directory in `save_pretrained`'s layout
    (config.json and model.safetensors or pytorch_model.bin), read offline."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} is not a HuggingFace model directory: it has no config.json (save_pretrained's)")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{config_file} is not a JSON object: {one_line(e)}") from None
    if model_type != "gpt2":
        raise UserError(f"{path} holds a {model_type!r} model, not GPT-2: only GPT-2's layout maps onto our GPT")
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise UserError(
            "loading a HuggingFace directory needs the transformers package: pip install 'minigpt[hf]'"
        ) from None
    try:
        with no_progress_bars():
            hf_model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True)
    except OSError as e:  # no weights file, or one that cannot be read
        raise UserError(f"{path}: transformers cannot load its GPT-2 weights: {one_line(e, 300)}") from None
    try:
        return gpt_from_hf(hf_model), "gpt2"
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def load_weights(source: str) -> tuple[GPT, str]:
    """(model in eval mode on the CPU, tokenizer name) from what `--model.init_from` names: a GPT-2 model name, a
    local HuggingFace GPT-2 directory or one of our .ckpt files."""
    if source in GPT2_NAMES:
        return load_gpt2(source)
    path = Path(source)
    if path.is_dir():
        return load_hf_directory(path)
    if path.is_file():
        return load_checkpoint(path)
    raise UserError(
        f"model.init_from={source!r} is neither a GPT-2 name ({', '.join(GPT2_NAMES)}), nor a HuggingFace GPT-2 "
        "directory, nor a .ckpt file"
    )


def _download_gpt2(model_class, name: str):
    # The hub client logs every retry; the failure, if it comes, is reported once by the caller.
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return model_class.from_pretrained(name)
    except OSError:
        raise UserError(
            f"cannot download GPT-2 weights {name!r} from the HuggingFace hub (no network?): connect once so they "
            "are cached, point HF_HOME at a cache holding them, or use a checkpoint with --ckpt"
        ) from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def gpt_from_hf(hf_model) -> GPT:
    """Our GPT with the weights of a `transformers.GPT2LMHeadModel`, in eval mode on the CPU."""
    c = hf_model.config
    unlike_ours = {
        "activation_function": c.activation_function != "gelu_new",  # GPT-2's tanh GELU
        "layer_norm_epsilon": c.layer_norm_epsilon != 1e-5,
        "n_inner": c.n_inner not in (None, 4 * c.n_embd),
        "scale_attn_weights": not c.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
    }
    if differing := [name for name, differs in unlike_ours.items() if differs]:
        raise ValueError(f"this GPT-2 config differs from our GPT's layout in {', '.join(differing)}")
    config = GPTConfig(
        vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        dropout=0.0, bias=True,
    )  # fmt: skip
    weights = {
        k: v.t() if k.endswith(CONV1D_WEIGHTS) else v
        for k, v in hf_model.state_dict().items()
        # Older transformers versions keep the causal mask as buffers next to the weights.
        if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    model = GPT(config)
    model.load_state_dict(weights)
    return model.eval()
