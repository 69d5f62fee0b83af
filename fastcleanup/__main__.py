"""``fastcleanup demo`` and ``fastcleanup bench`` (also ``python -m fastcleanup``)."""

from __future__ import annotations

import sys

_USAGE = """usage: fastcleanup {demo,bench} [options]

  demo    crawl a local test site and show fastcleanup at work (needs fastcleanup[demo])
  bench   compare cleanup designs on a burst of file removals

Run 'fastcleanup COMMAND --help' for the options of each.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from .demo.cli import main as demo

        return demo(rest)
    if command == "bench":
        from .bench.cli import main as bench

        return bench(rest)
    print(f"fastcleanup: unknown command {command!r}\n\n{_USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
