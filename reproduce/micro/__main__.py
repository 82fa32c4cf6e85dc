"""``python -m reproduce.micro <command>``: ``train`` (a micro model from scratch), ``evaluate`` (a
checkpoint's held-out accuracy against its model card), ``oracle`` (the language model alone, on oracle
visual inputs), ``bias`` and ``scenes``."""

from __future__ import annotations

import sys

USAGE = """python -m reproduce.micro <command> [options]

Commands:
  train      train a micro model from scratch (python -m reproduce.micro train --help)
  evaluate   held-out accuracy of a micro checkpoint, checked against its model card
  oracle     the language model alone, on oracle visual inputs (python -m reproduce.micro oracle --help)
  bias       positional bias of a micro model and what debiasing changes (python -m reproduce.micro bias --help)
  scenes     write N calibration scenes as PNG files: scenes OUT_DIR [N] (for the prior command)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from reproduce.micro.train import main as run
    elif command == "evaluate":
        from reproduce.micro.evaluate import main as run
    elif command == "oracle":
        from reproduce.micro.oracle import main as run
    elif command == "bias":
        from reproduce.micro.bias import main as run
    elif command == "scenes":
        if len(rest) not in (1, 2) or (len(rest) == 2 and not rest[1].isdigit()):
            print("usage: python -m reproduce.micro scenes OUT_DIR [N]", file=sys.stderr)
            return 2
        from reproduce.micro.data import write_scenes

        paths = write_scenes(rest[0], int(rest[1]) if len(rest) == 2 else 256)
        print(f"wrote {len(paths)} scenes to {rest[0]}")
        return 0
    else:
        print(f"error: unknown command {command!r}; available: train, evaluate, oracle, bias, scenes", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
