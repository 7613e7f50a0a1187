"""Tests for castrl.data: arithmetic suite, prompts, loaders, presets and load-time errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from castrl.data import (
    BOXED_SUFFIX,
    LEVELS,
    DataError,
    build_prompt,
    last_boxed,
    load_problems,
    make_arithmetic,
    parse_spec,
    to_trl_dataset,
)

BINARY = re.compile(r"^What is (\d+) ([+*]) (\d+)\?$")
WORD = (
    (re.compile(r"^\w+ has (\d+) \w+ and buys (\d+) more\."), "+"),
    (re.compile(r"^\w+ had (\d+) \w+ and gave (\d+) of them"), "-"),
    (re.compile(r"^\w+ has (\d+) boxes with (\d+) \w+ in each box\."), "*"),
)
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def equation(text: str) -> tuple[str, int, int]:
    """(op, a, b) parsed back from a generated problem text; fails the test if unparseable."""
    match = BINARY.match(text)
    if match:
        return match.group(2), int(match.group(1)), int(match.group(3))
    for pattern, op in WORD:
        match = pattern.match(text)
        if match:
            return op, int(match.group(1)), int(match.group(2))
    raise AssertionError(f"cannot parse generated problem {text!r}")


def canonical(text: str) -> tuple[str, int, int]:
    op, a, b = equation(text)
    return (op, a, b) if op == "-" else (op, min(a, b), max(a, b))


# ---------------------------------------------------------------- arithmetic suite


def test_arithmetic_is_seeded() -> None:
    first = make_arithmetic("train", LEVELS, n_per_level=20, seed=3)
    assert first == make_arithmetic("train", LEVELS, n_per_level=20, seed=3)
    assert [r["problem"] for r in first] != [
        r["problem"] for r in make_arithmetic("train", LEVELS, 20, seed=4)
    ]
    # A level's problems do not depend on which other levels are requested.
    alone = make_arithmetic("train", ("mul21",), n_per_level=20, seed=3)
    assert alone == [r for r in first if r["level"] == "mul21"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_test_disjoint_including_commuted_and_renamed_twins(seed: int) -> None:
    sizes = {
        "add1": (63, 16),
        "add2": (200, 100),
        "mul21": (200, 100),
        "mul22": (200, 100),
        "word": (200, 100),
    }
    train, test = [], []
    for level, (n_train, n_test) in sizes.items():
        train += make_arithmetic("train", (level,), n_per_level=n_train, seed=seed)
        test += make_arithmetic("test", (level,), n_per_level=n_test, seed=seed)
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    assert not {canonical(r["problem"]) for r in train} & {canonical(r["problem"]) for r in test}
    assert ("+", 3, 4) not in {canonical(r["problem"]) for r in train + test}  # the one-shot example


def test_every_level_has_correct_answers_and_solutions() -> None:
    records = make_arithmetic("test", LEVELS, n_per_level=15, seed=0)
    assert [r["level"] for r in records] == [lvl for lvl in LEVELS for _ in range(15)]
    assert len({r["id"] for r in records}) == len(records)
    word_ops = set()
    for rec in records:
        op, a, b = equation(rec["problem"])
        assert rec["answer"] == str(OPS[op](a, b)), rec
        assert (
            rec["solution"]
            == f"{a} {op} {b} = {rec['answer']}. The final answer is \\boxed{{{rec['answer']}}}."
        )
        assert last_boxed(rec["solution"]) == rec["answer"]
        if rec["level"] == "word":
            word_ops.add(op)
        elif rec["level"] == "add1":
            assert 1 <= a <= 9 and 1 <= b <= 9 and op == "+"
        elif rec["level"] == "mul22":
            assert 11 <= a <= 99 and 11 <= b <= 99 and op == "*"
    assert word_ops == {"+", "-", "*"}


def test_arithmetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="only 63 distinct train problems"):
        make_arithmetic("train", ("add1",), n_per_level=64)
    with pytest.raises(ValueError, match="unknown arithmetic level.*valid levels: add1"):
        make_arithmetic("train", ("add3",))
    with pytest.raises(ValueError, match="split must be one of"):
        make_arithmetic("validation")
    with pytest.raises(ValueError, match="n_per_level must be a positive int"):
        make_arithmetic("train", n_per_level=0)


# ---------------------------------------------------------------- prompts and the TRL dataset


def test_build_prompt_styles() -> None:
    oneshot = build_prompt("What is 2 + 5?")
    assert [m["role"] for m in oneshot] == ["user", "assistant", "user"]
    assert oneshot[0]["content"] == "What is 4 + 3?" + BOXED_SUFFIX
    assert oneshot[1]["content"] == "4 + 3 = 7. The final answer is \\boxed{7}."
    assert (
        oneshot[2]["content"]
        == "What is 2 + 5? Please reason step by step, and put your final answer within \\boxed{}."
    )
    assert build_prompt("Q?", "cot") == [{"role": "user", "content": "Q?" + BOXED_SUFFIX}]
    assert build_prompt("Q?", "plain") == [{"role": "user", "content": "Q?"}]
    with pytest.raises(ValueError, match="valid styles: oneshot, cot, plain"):
        build_prompt("Q?", "direct")


def test_to_trl_dataset_columns() -> None:
    records = make_arithmetic("train", ("add1",), n_per_level=4) + [
        {"id": "x", "problem": "What is 1 + 1?", "answer": 2, "solution": None, "level": None}
    ]
    ds = to_trl_dataset(records, style="cot")
    assert isinstance(ds, datasets.Dataset)
    assert set(ds.column_names) == {"prompt", "problem", "answer", "solution", "id", "level"}
    assert ds[0]["prompt"] == build_prompt(records[0]["problem"], "cot")
    assert ds[0]["problem"] == records[0]["problem"]  # raw, no suffix: the teacher re-wraps it
    assert ds[4]["answer"] == "2" and ds[4]["solution"] == "" and ds[4]["level"] == ""
    with pytest.raises(DataError, match="record 1: column 'id': duplicate id 'a'"):
        to_trl_dataset([{"id": "a", "problem": "p", "answer": "1"}] * 2)
    with pytest.raises(DataError, match="record 0: column 'answer': expected a string or number, got list"):
        to_trl_dataset([{"id": "a", "problem": "p", "answer": [1]}])


# ---------------------------------------------------------------- loaders and presets


def write_jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_jsonl_generic_and_custom_columns(tmp_path: Path) -> None:
    rows = [{"id": "a", "problem": "1+1?", "answer": 2, "level": "easy"}, {"problem": "2+2?", "answer": "4"}]
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    recs = load_problems(path)
    assert load_problems(Path(path)) == recs
    assert recs == [
        {"id": "a", "problem": "1+1?", "answer": "2", "solution": None, "level": "easy"},
        {"id": "toy-1", "problem": "2+2?", "answer": "4", "solution": None, "level": None},
    ]
    nested = write_jsonl(tmp_path / "nested.jsonl", [{"q": "3+3?", "meta": {"gold": 6, "why": "3+3=6"}}])
    recs = load_problems(nested, problem_key="q", answer_key="meta.gold", solution_key="meta.why")
    assert recs[0]["answer"] == "6" and recs[0]["solution"] == "3+3=6"


def test_gsm8k_preset_and_split_placeholder(tmp_path: Path) -> None:
    row = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
    write_jsonl(tmp_path / "test.jsonl", [row])
    recs = load_problems(str(tmp_path / "{split}.jsonl") + ":gsm8k", split="test")
    assert recs[0]["problem"] == row["question"]
    assert recs[0]["answer"] == "7" and recs[0]["solution"] == row["answer"]
    write_jsonl(tmp_path / "bad.jsonl", [row, {"question": "q", "answer": "no marker"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: column 'answer': has no '#### <answer>' line"):
        load_problems(str(tmp_path / "bad.jsonl"), preset="gsm8k")


def test_math_preset_from_json(tmp_path: Path) -> None:
    rows = [
        {"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "Two?", "solution": "So \\boxed{1} then \\boxed{2}.", "answer": "2", "unique_id": "u/2"},
        {"problem": "None?", "solution": "no box here"},
    ]
    path = tmp_path / "math.json"
    path.write_text(json.dumps(rows[:2]), encoding="utf-8")
    recs = load_problems(f"{path}:math")
    assert recs[0]["answer"] == "\\frac{1}{2}" and recs[0]["level"] == "Level 1"
    assert recs[0]["solution"] == rows[0]["solution"]
    assert recs[1]["answer"] == "2" and recs[1]["id"] == "u/2"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"math\.json: row index 2: column 'solution': has no \\boxed"):
        load_problems(f"{path}:math")
    path.write_text(
        json.dumps([{"problem": "No solution?", "answer": "3"}, {"problem": "Nothing?"}]), encoding="utf-8"
    )
    with pytest.raises(
        DataError, match=r"row index 1: column 'solution': missing or empty and the row has no answer"
    ):
        load_problems(f"{path}:math")


DAPO_HEAD = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


def test_dapo_preset_from_parquet(tmp_path: Path) -> None:
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_HEAD + f"Compute {i} + {i}." + DAPO_TAIL}],
            "ability": "MATH",
            "reward_model": {"ground_truth": str(2 * i), "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"uuid-{i}"},
        }
        for i in range(3)
    ]
    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recs = load_problems(f"{path}:dapo")
    assert [r["problem"] for r in recs] == ["Compute 0 + 0.", "Compute 1 + 1.", "Compute 2 + 2."]
    assert [r["answer"] for r in recs] == ["0", "2", "4"] and recs[2]["id"] == "uuid-2"
    rows[1]["reward_model"] = {"ground_truth": "", "style": "rule"}
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(
        DataError, match=r"dapo\.parquet: row index 1: column 'reward_model\.ground_truth': is empty"
    ):
        load_problems(str(path), preset="dapo")


def test_datasets_objects(tmp_path: Path) -> None:
    train = datasets.Dataset.from_list(
        [{"problem": "1+2?", "answer": "3"}, {"problem": "2+2?", "answer": "4"}]
    )
    dd = datasets.DatasetDict({"train": train, "test": train.select([0])})
    assert [r["answer"] for r in load_problems(train)] == ["3", "4"]
    assert len(load_problems(dd, split="test")) == 1
    with pytest.raises(ValueError, match=r"no split 'validation'; its splits: \['train', 'test'\]"):
        load_problems(dd, split="validation")
    bad = datasets.Dataset.from_list([{"problem": "1+2?", "answer": "3"}, {"problem": " ", "answer": "4"}])
    with pytest.raises(DataError, match="row index 1: column 'problem': is empty"):
        load_problems(bad)
    train.to_parquet(str(tmp_path / "from_datasets.parquet"))
    assert [r["problem"] for r in load_problems(str(tmp_path / "from_datasets.parquet"))] == ["1+2?", "2+2?"]


def test_spec_strings() -> None:
    assert parse_spec("arithmetic") == ("arithmetic", "", None)
    assert parse_spec("data/x.jsonl:gsm8k") == ("file", "data/x.jsonl", "gsm8k")
    recs = load_problems("arithmetic:add1,word", split="test", n_per_level=5, seed=2)
    assert [r["level"] for r in recs] == ["add1"] * 5 + ["word"] * 5
    assert recs == make_arithmetic("test", ("add1", "word"), n_per_level=5, seed=2)
    with pytest.raises(ValueError, match="unknown preset 'gsm9k'.*valid presets: generic, gsm8k, math, dapo"):
        load_problems("data/x.jsonl:gsm9k")
    with pytest.raises(ValueError, match="names preset 'gsm8k' but preset='math'"):
        load_problems("data/x.jsonl:gsm8k", preset="math")
    with pytest.raises(ValueError, match="column arguments and presets apply to files"):
        load_problems("arithmetic", answer_key="gold")
    with pytest.raises(TypeError, match="unknown column argument"):
        load_problems("x.jsonl", question_key="q")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_problems("x.csv")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl: no such file"):
        load_problems("nowhere.jsonl")


# ---------------------------------------------------------------- malformed rows fail loudly

GOOD = {"id": "g", "problem": "1+1?", "answer": "2"}


def jsonl_with(bad_line: str, lineno: int) -> str:
    lines = [json.dumps({**GOOD, "id": f"g{i}"}) for i in range(1, lineno)] + [bad_line]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("bad_line", "lineno", "expected"),
    [
        ('{"id": "x", "problem": "1+1?", "answer": ', 7, r"line 7: invalid JSON"),
        (
            json.dumps({"id": "x", "answer": "2"}),
            3,
            r"line 3: column 'problem': missing \(the row has columns",
        ),
        (
            json.dumps({"id": "x", "problem": "p", "answer": [1, 2]}),
            4,
            r"line 4: column 'answer': expected a string or number, got list",
        ),
        (json.dumps({"id": "x", "problem": "", "answer": "2"}), 2, r"line 2: column 'problem': is empty"),
        (
            json.dumps({"id": "x", "problem": "p", "answer": True}),
            2,
            r"line 2: column 'answer': expected a string, got a bool",
        ),
        (
            json.dumps({"id": "x", "problem": 5, "answer": "5"}),
            2,
            r"line 2: column 'problem': expected a string, got int",
        ),
        (
            json.dumps({"id": "g1", "problem": "p", "answer": "2"}),
            5,
            r"line 5: column 'id': duplicate id 'g1' \(first seen at line 1\)",
        ),
        (json.dumps(["p", "2"]), 2, r"line 2: expected an object with named columns, got list"),
    ],
)
def test_malformed_jsonl_names_file_line_and_column(
    tmp_path: Path, bad_line: str, lineno: int, expected: str
) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(jsonl_with(bad_line, lineno), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + expected) as err:
        load_problems(str(path))
    assert err.value.source == str(path) and err.value.where == f"line {lineno}"


def test_missing_column_suggests_preset(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a\n#### 1"}])
    with pytest.raises(DataError, match="column 'problem': missing.*add ':gsm8k' to the spec"):
        load_problems(path)


@pytest.mark.parametrize(
    ("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.json", "[]")]
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(name) + ": contains no rows"):
        load_problems(str(tmp_path / name))


def test_malformed_json_and_parquet(tmp_path: Path) -> None:
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"rows": [GOOD]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"obj\.json: expected a JSON array of row objects, got dict"):
        load_problems(str(obj))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"problem": "p",\n "answer": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: line 3: invalid JSON"):
        load_problems(str(broken))
    table = pa.Table.from_pylist([{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(
        DataError,
        match=r"dup\.parquet: row index 2: column 'id': duplicate id 'a' \(first seen at row index 0\)",
    ):
        load_problems(str(tmp_path / "dup.parquet"))
    pq.write_table(pa.Table.from_pylist([{"problem": "p", "gold": "1"}]), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match=r"nocol\.parquet: row index 0: column 'answer': missing"):
        load_problems(str(tmp_path / "nocol.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: is not a readable Parquet file"):
        load_problems(str(tmp_path / "junk.parquet"))


def test_no_row_dropped(tmp_path: Path) -> None:
    rows = [{"problem": f"{i}+1?", "answer": i + 1} for i in range(50)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    recs = load_problems(path)
    assert [r["problem"] for r in recs] == [r["problem"] for r in rows]
    assert len({r["id"] for r in recs}) == 50


def test_last_boxed() -> None:
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{3} then \\boxed{}") == "3"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None
