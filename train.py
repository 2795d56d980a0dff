"""Train a GPT with Lightning: `minigpt train`, run from a checkout.

python train.py                                   # the default config: offline, ~3 minutes on a CPU
python train.py --config configs/shakespeare_char.yaml --model.n_layer 4 --trainer.max_steps 200
python train.py --print_config                    # the resolved config
python train.py --ckpt_path last                  # resume the newest run (or --name NAME's)
"""

import sys

from minigpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
