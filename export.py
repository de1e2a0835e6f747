"""
A trained model alone, small enough to commit or share: the weights and config of a run's
checkpoint, and what it was trained on and how, without the optimizer and random state that
only resuming needs (about a quarter of the checkpoint).

    python export.py out/addition_ut_s1338/ckpt.pt addition_ut_s1338.pt
    python sample.py --ckpt addition_ut_s1338.pt --prompt "1234567890+9876543210=" --steps
    python evaluate.py --ckpt addition_ut_s1338.pt --temperature 1

The weights are saved as trained (fp32), so the exported model answers exactly as the
checkpoint's does.
"""

import os
import sys

import flags
import resume
from records import UserError


def main(argv=None):
    p = flags.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("ckpt", help="a run's ckpt.pt")
    p.add_argument("out", help="the file to write (refused if it exists)")
    try:
        args = p.parse_args(argv)
        if os.path.exists(args.out):  # never overwrite what may be the only copy of a model
            raise UserError(f"{args.out} exists; remove it or name another file")
        ckpt = resume.load_checkpoint(args.ckpt, resume.MODEL_KEYS)
        resume.save_model(ckpt, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mb = os.path.getsize(args.out) / 1e6  # decimal megabytes, as a file manager shows them
    print(f"{args.out}: {ckpt['config']['model']} on {ckpt.get('task', '?')}, seed "
          f"{ckpt.get('seed', '?')}, iter {ckpt['iter']}, {mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
