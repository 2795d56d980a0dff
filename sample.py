"""Generate text from a checkpoint or from GPT-2's weights: `minigpt sample`, run from a checkout.

python sample.py                                   # the newest run under runs/: best.ckpt, else last.ckpt
python sample.py --ckpt runs/x/checkpoints/last.ckpt --prompt "ROMEO:" --num-samples 3
python sample.py --init-from gpt2 --prompt "Hello, I'm a language model," --top-p 0.9
python sample.py --help                            # every option
"""

import sys

from minigpt.sample import main

if __name__ == "__main__":
    sys.exit(main())
