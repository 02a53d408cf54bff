"""Export an s2s checkpoint as a plain `.pt` in the design card's layout.

    python -m s2s.export outputs/adapter_stage1/<run id>/final finetune_stage1.pt

The file is `torch.save({top-level module name: state dict of tensors})`, e.g. {"adapter": ...,
"expansion": ...} for a strategy with those modules: what the card ships, readable with
`torch.load(weights_only=True)`. It holds the trainable weights only; the strategy and config are
not in it, so the command prints how to score it (`python -m evaluation.score OUT.pt --strategy
NAME ...`), which gives the same teacher-forced loss as scoring the checkpoint directory.
"""
from __future__ import annotations

import argparse
import sys

from s2s.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s2s.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an s2s checkpoint directory (holding model.safetensors and meta.json)")
    parser.add_argument("out", help="the .pt file to write")
    args = parser.parse_args(argv)
    from s2s.card_layout import export_checkpoint  # after parsing: --help stays fast

    try:
        result = export_checkpoint(args.checkpoint, args.out)
    except UserError as e:  # says what was wrong and how to fix it; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    modules = ", ".join(f"{name} ({n} tensors, {p:,} parameters)" for name, (n, p) in result.modules.items())
    print(f"wrote {result.path}: strategy '{result.strategy}', step {result.step}, {result.preset} preset; {modules}")
    print(f"score it with: {result.score_command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
