"""The `minigpt` command, also `python -m minigpt`: train, sample, attention, prepare, export, eval; each its options.

minigpt train [--config NAME_OR_FILE] [--model.* ...] [--data.* ...] [--trainer.* ...]
minigpt sample [--ckpt FILE] [--prompt TEXT] ...
minigpt attention [--ckpt FILE] --prompt TEXT --out MAPS.html|MAPS.png
minigpt prepare [--config NAME_OR_FILE] [--data.* ...]
minigpt export --ckpt FILE --out DIR [--force]
minigpt eval (--ckpt FILE | --init-from gpt2) --task hellaswag [--data FILE.jsonl] [--limit N] [--out R.json]
minigpt COMMAND --help
"""

import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS = {
    "train": "train a GPT (python train.py in a checkout)",
    "sample": "generate text from a checkpoint or GPT-2 (python sample.py in a checkout)",
    "attention": "draw a prompt's attention (explorer page or PNGs) and print the head scores",
    "prepare": "build the token cache of a config's data, without training",
    "export": "write a checkpoint as a HuggingFace GPT-2 directory (transformers, lm_eval)",
    "eval": "score a checkpoint or GPT-2 on a benchmark (HellaSwag, completion style)",
}


def usage() -> str:
    commands = "\n".join(f"  {name:<9} {what}" for name, what in COMMANDS.items())
    names = ",".join(COMMANDS)
    return f"usage: minigpt {{{names}}} [options]\n\ncommands:\n{commands}\n\nminigpt COMMAND --help lists its options."


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        try:
            print(f"minigpt {version('minigpt')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("minigpt (not installed)")
        return 0
    command, rest = args[0], args[1:]
    prog = f"minigpt {command}"
    if command == "train":
        from minigpt.cli import main as train

        return train(rest, prog)
    if command == "prepare":
        from minigpt.cli import prepare

        return prepare(rest, prog)
    if command == "sample":
        from minigpt.sample import main as sample

        return sample(rest, prog)
    if command == "attention":
        from minigpt.maps import main as attention

        return attention(rest, prog)
    if command == "export":
        from minigpt.export import main as export

        return export(rest, prog)
    if command == "eval":
        from minigpt.evaluate import main as evaluate

        return evaluate(rest, prog)
    print(f"error: unknown command {command!r}: use one of {', '.join(COMMANDS)} (see minigpt --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
