"""`castrl` command line: train, eval, bench, diagnose."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: castrl {train,eval,bench,diagnose} ...")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from castrl.train import main as train_main

        return train_main(rest)
    if command == "eval":
        from castrl.eval_cli import main as eval_main

        return eval_main(rest)
    if command == "diagnose":
        from castrl.diagnose_cli import main as diagnose_main

        return diagnose_main(rest)
    if command == "bench":
        from castrl.bench import main as bench_main

        return bench_main(rest)
    print(f"castrl: unknown command {command!r}; expected one of train, eval, bench, diagnose", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
