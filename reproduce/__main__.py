"""``python -m reproduce <command>``: the command line of the package (see :data:`USAGE`)."""

from __future__ import annotations

import sys

from reproduce.specs import TABLES

#: What ``python -m reproduce`` prints; the table commands are the spec files (:data:`reproduce.specs.TABLES`).
USAGE = """``python -m reproduce <command> [options]``.

Commands:
  list                    the tables, what each runs, and which paper cells are known
  {tables:<22}  regenerate a paper table through lmms-eval (``--smoke``: tiny models on CPU, seconds);
                          ``python -m reproduce {first} --help`` for the options
  efficiency              FLOPs reduction of both paper models under each counting convention (CPU, seconds)
"""

COMMANDS = {"efficiency": "reproduce.efficiency", "list": "reproduce.listing"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(tables="|".join(TABLES), first=TABLES[0]))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in TABLES:
        from reproduce import run

        return run.main(command, rest)
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; available: {', '.join([*TABLES, *sorted(COMMANDS)])}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
