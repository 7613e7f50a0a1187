"""Write verl train/test parquet files from any castrl dataset spec (offline for the arithmetic suite).

    python examples/verl/make_parquet.py --spec arithmetic:add1,add2,mul21 --out ~/data/arith
    python examples/verl/make_parquet.py --spec gsm8k_train.jsonl:gsm8k --test-spec gsm8k_test.jsonl:gsm8k --out ~/data/gsm8k

Spec grammar: castrl.data.loaders (files with presets gsm8k / math / dapo, or the arithmetic suite).
Prompts are castrl's boxed styles, so verl's default "lighteval/MATH" reward scores them.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from castrl.data import load_problems
from castrl.integrations.verl.data import DEFAULT_DATA_SOURCE, verl_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--spec", default="arithmetic", help="castrl dataset spec for training (and test if no --test-spec)"
    )
    parser.add_argument("--test-spec", default=None, help="castrl dataset spec for the test split")
    parser.add_argument("--out", required=True, help="folder for train.parquet and test.parquet")
    parser.add_argument("--style", default="cot", help="student prompt style: oneshot, cot or plain")
    parser.add_argument(
        "--data-source", default=DEFAULT_DATA_SOURCE, help="verl data_source (picks the reward)"
    )
    parser.add_argument(
        "--n-per-level", type=int, default=None, help="arithmetic problems per level and split"
    )
    args = parser.parse_args()

    os.makedirs(os.path.expanduser(args.out), exist_ok=True)
    for split, spec in (("train", args.spec), ("test", args.test_spec or args.spec)):
        kwargs = {"n_per_level": args.n_per_level} if spec.startswith("arithmetic") else {}
        problems = load_problems(spec, split, **kwargs)  # split: arithmetic split / "{split}" in a path
        path = os.path.join(os.path.expanduser(args.out), f"{split}.parquet")
        pd.DataFrame(verl_rows(problems, split, args.style, args.data_source)).to_parquet(path)
        print(f"{path}: {len(problems)} rows")


if __name__ == "__main__":
    main()
