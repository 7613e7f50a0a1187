"""`castrl bench control`: the positive control — the paper's CAST rule fed teachers of graded strength.

On the bundled model the answer-free self-teacher may know nothing, and then a CAST loss cannot tell "the
rule does not work" from "the teacher carries no signal". Here the signal is known and graded. The student
is the tiny tier's SFT model (~1M parameters, trained from scratch). Its teachers read the student's own
prompt (they differ by weights only, OPD-style):

- `self`: the paper's self-teacher weights, a policy snapshot every 10 steps: it knows nothing the student
  does not (the zero-signal end);
- `sft+N`: the student's SFT run continued for N more steps (`LadderSettings`), a frozen external
  `teacher_model`; more steps, a stronger teacher;
- `self+answer` (and `sft+N+answer`): the same weights reading the reference answer, in the hinted prompt
  the student's SFT taught it to copy (`ANSWER_TEMPLATE`, a quarter of its SFT prompts). This is the
  paper's privileged teacher realised for a model trained from scratch, and the strongest teacher the
  control has: run as a knob study, `cast@teacher_context=with_answer` (`@teacher_model=sft+N`).

Before any RL, `castrl diagnose`'s pipeline characterises every teacher on the student's own rollouts
(`characterise`: per-rollout gap AUC of correct vs wrong within mixed groups, the share of tokens it sets
against the verifier, CAST's flip shares). The grid: `grpo`, then `cast`, `cast@flip=false`, `rlsd` and
`opsd` with each teacher, 5 seeds. The report plots each method's gain over GRPO against the teacher's AUC.

    castrl bench control [--seeds 5] [--methods all] [--cells_dir bench/cells] [--scratch_dir bench_cache]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from castrl.bench.common.cells import Cell
from castrl.bench.common.methods import Teacher
from castrl.bench.common.tier import CELL_DECODER, Tier, tier_main
from castrl.bench.common.tiny_sft import (
    ANSWER_TEMPLATE,
    SFTSettings,
    held_out_of,
    prompt_text,
    records,
    sft_loop,
    student_digest,
)
from castrl.bench.common.tiny_student import SETTINGS as TINY
from castrl.bench.common.tiny_student import TinySettings, prepare_sft, run_tiny_cell
from castrl.core import get_estimator
from castrl.formatting import num, write_json

TIER_NAME = "control"
SELF = "self"  # the self-teacher's name in cells and the report (a method without a teacher_model knob)
# A teacher reading the reference answer: the paper's context name for it, and the suffix of its teacher name
ANSWER_CONTEXT = "with_answer"
ANSWER = "+answer"
LADDER_INFO_FILE = "ladder.json"


@dataclass(frozen=True)
class LadderSettings:
    """The graded teachers: the student's SFT run continued from its checkpoint (fresh optimizer, batches
    drawn with `seed`), a checkpoint after each of `rungs` more steps. Same architecture and data as
    the student; only the training length differs, so "stronger" means "trained longer"."""

    rungs: tuple[int, ...] = (500, 2000)
    learning_rate: float = 3e-3
    eval_every: int = 250
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.rungs or any(r < 1 for r in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise ValueError(f"ladder rungs must be increasing positive step counts, got {self.rungs}")

    def names(self) -> tuple[str, ...]:
        return tuple(f"sft+{n}" for n in self.rungs)

    def key(self, sft: SFTSettings) -> str:
        text = json.dumps({"sft": asdict(sft), "ladder": asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class DiagnoseSpec:
    """How each teacher is characterised before RL (`castrl diagnose`'s pipeline on the student)."""

    n_prompts: int = 96  # RL training problems (the problems RL will sample), 32 per level
    group_size: int = 8  # the RL grid's num_generations
    temperature: float = 0.7  # the trainer's rollout temperature (diagnose samples without top-k / top-p)
    seed: int = 0


@dataclass(frozen=True)
class ControlSettings(TinySettings):
    """The tiny tier's settings (student SFT, RL, evaluation) plus the teacher ladder and its diagnosis."""

    ladder: LadderSettings = LadderSettings()
    diagnose: DiagnoseSpec = DiagnoseSpec()


SETTINGS = ControlSettings(**{f: getattr(TINY, f) for f in TINY.__dataclass_fields__})
QUICK = replace(SETTINGS, sft=SFTSettings(max_steps=200, eval_every=100, n_per_level=200), steps=4,
                prompts_per_step=4, eval_every=2, train_n_per_level=16, eval_n_per_level=16,
                ladder=LadderSettings(rungs=(50,), eval_every=50), diagnose=DiagnoseSpec(n_prompts=12))
# Every paper context maps to the student's own prompt: the teachers differ from the student by weights only
# (a model trained from scratch reads no other context). Without a teacher_model knob: the self-teacher.
TEACHERS = {context: Teacher("student", "refresh:10")
            for context in ("answer_free", "with_reference", "with_peer_success")}
# ... except the answer-reading teacher (no grid estimator pairs with `with_answer`, so no cell of the grid
# changes): the hinted prompt of the student's SFT
TEACHERS[ANSWER_CONTEXT] = Teacher(ANSWER_TEMPLATE, "refresh:10")
TEACHER_METHODS = ("cast", "cast@flip=false", "rlsd", "opsd")


def grid(ladder: LadderSettings) -> tuple[str, ...]:
    """grpo, then every teacher method with the self-teacher and with each rung (`@teacher_model=sft+N`)."""
    external = [f"{m}@teacher_model={name}" for name in ladder.names() for m in TEACHER_METHODS]
    return ("grpo", *TEACHER_METHODS, *external)


def teacher_of(method: str) -> str:
    """The teacher name of a grid method: its teacher_model rung (`self` without that knob), plus `+answer`
    when it reads the reference answer (`@teacher_context=with_answer`); '' for an estimator without a
    teacher, as the registry says."""
    if not get_estimator(method.split("@")[0]).needs_teacher:
        return ""
    knobs = method.split("@")[1:]
    rung = next((k.partition("=")[2] for k in knobs if k.startswith("teacher_model=")), SELF)
    return rung + ANSWER if f"teacher_context={ANSWER_CONTEXT}" in knobs else rung


def teacher_context(name: str) -> str:
    """The context teacher `name` reads: the hinted prompt for an `+answer` teacher, else the student's."""
    return ANSWER_TEMPLATE if name.endswith(ANSWER) else "student"


def teacher_weights_of(name: str) -> str:
    """The rung whose weights teacher `name` scores with (`self`: the policy's snapshot)."""
    return name.removesuffix(ANSWER)


# --- the ladder and its characterisation ---------------------------------------------------------------


def ladder_folder(settings: ControlSettings, scratch_dir: str, student: str) -> Path:
    """The scratch folder holding every rung's checkpoint and `ladder.json` (how they were trained), per
    student (`tiny_sft.student_digest`): the rungs continue that student's SFT."""
    return Path(scratch_dir) / "control_ladder" / f"{settings.ladder.key(settings.sft)}-{student}"


def teacher_ladder(settings: ControlSettings, sft_dir: Path, scratch_dir: str, progress: bool) -> dict[str, Path]:
    """name -> checkpoint folder of every rung, trained (once, cached under the scratch folder) by
    continuing the student's SFT; `ladder.json` beside them records the accuracy history."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    ladder = settings.ladder
    folder = ladder_folder(settings, scratch_dir, student_digest(sft_dir))
    paths = {name: folder / name for name in ladder.names()}
    if (folder / LADDER_INFO_FILE).exists():
        return paths
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = LlamaForCausalLM.from_pretrained(sft_dir)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    monitor = held_out_of(records("train", settings.sft.levels, settings.sft.monitor_n_per_level, settings.train_seed))
    saved: dict[int, float] = {}

    def checkpoint(step: int, accuracy: float) -> bool:
        if step in ladder.rungs:
            model.save_pretrained(tmp / f"sft+{step}")
            tokenizer.save_pretrained(tmp / f"sft+{step}")
            saved[step] = accuracy
        return step >= ladder.rungs[-1]

    if any(r % ladder.eval_every for r in ladder.rungs):
        raise ValueError(f"ladder rungs {ladder.rungs} must be multiples of eval_every {ladder.eval_every}")
    start = time.perf_counter()
    history = sft_loop(model, tokenizer, settings.sft, monitor, max_steps=ladder.rungs[-1],
                       eval_every=ladder.eval_every, learning_rate=ladder.learning_rate, seed=ladder.seed,
                       on_eval=checkpoint, progress=progress, desc="teacher ladder")
    write_json(tmp / LADDER_INFO_FILE, {"ladder": asdict(ladder), "history": history,
                                        "monitor_accuracy": {f"sft+{k}": v for k, v in saved.items()},
                                        "seconds": time.perf_counter() - start}, indent=1)
    if not folder.exists():
        os.replace(tmp, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return paths


def profile_path(settings: ControlSettings, name: str, student: str, cache_dir: str) -> Path:
    """Where teacher `name`'s diagnosis of the student with digest `student` is cached."""
    return Path(cache_dir) / TIER_NAME / "teachers" / f"{name}-{settings.ladder.key(settings.sft)}-{student}.json"


def characterise(settings: ControlSettings, student_dir: Path, name: str, teacher_dir: Path | None,
                 cache_dir: str, scratch_dir: str) -> dict[str, Any]:
    """`castrl diagnose` of one teacher on the student's rollouts (cached as JSON in the cell cache):
    gap AUC within mixed groups, tokens set against the verifier, flip shares. `teacher_dir` None: the
    self-teacher, which before any RL step equals the student (its gap is 0 and its AUC 0.5 by construction:
    the diagnosis measures that rather than assuming it)."""
    from castrl.diagnostics.pipeline import run_diagnostics
    from castrl.diagnostics.settings import DiagnoseSettings
    from castrl.rewards import Verifier

    spec = settings.diagnose
    student = student_digest(student_dir)
    path = profile_path(settings, name, student, cache_dir)
    if path.exists():
        return json.loads(path.read_text())
    problems = records("train", settings.sft.levels, spec.n_prompts // len(settings.sft.levels), settings.train_seed)
    diag = DiagnoseSettings(
        model=str(student_dir), teachers=[teacher_context(name)], teacher_model=str(teacher_dir or student_dir),
        n_prompts=len(problems), group_size=spec.group_size, max_new_tokens=settings.max_completion_length,
        temperature=spec.temperature, threads=0, seed=spec.seed, output_dir=str(Path(scratch_dir) / TIER_NAME / "diagnose"),
        decoder=CELL_DECODER, progress=False,
    )  # fmt: skip
    with Verifier(use_pool=False) as verifier:
        run = run_diagnostics(diag, problems=problems, student_prompts=[prompt_text(p["problem"]) for p in problems],
                              reward_fn=verifier.score_batch)
    teacher = run.results["teachers"][teacher_context(name)]
    seq, flips = teacher["sequences"], teacher["cast_metrics"]
    result = {
        "teacher": name, "student_digest": student, "auc": seq["auc_mean"], "auc_sum": seq["auc_sum"],
        "n_pairs": seq["n_pairs"], "n_ties": seq.get("n_ties"), "tie_share": seq.get("tie_share"),
        "frac_zero_gap": seq.get("frac_zero_gap"),
        "against_verifier": teacher["against_verifier"], "verdict": teacher["verdict"],
        "frac_flipped": flips.get("cast/frac_flipped"),
        "frac_flipped_correct_negative": flips.get("cast/frac_flipped_correct_negative"),
        "frac_flipped_incorrect_positive": flips.get("cast/frac_flipped_incorrect_positive"),
        "groups": run.results["groups"], "diagnose": asdict(spec),
        "noise_floor": (teacher.get("noise_floor") or {}).get("pooled"),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result, indent=1)
    return result


def rung_heldout_accuracy(settings: ControlSettings, folder: Path) -> float:
    """Greedy accuracy of a rung on the cells' held-out problems (the student's is its step-0 evaluation)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from castrl.evaluation import heldout_accuracy
    from castrl.rewards import Verifier

    model, tokenizer = LlamaForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    held_out = held_out_of(records("test", settings.sft.levels, settings.eval_n_per_level, 0))
    with Verifier(use_pool=False) as verifier:
        return heldout_accuracy(model, tokenizer, held_out.prompts, held_out.answers, verifier, levels=held_out.levels,
                                max_new_tokens=settings.eval_max_new_tokens, batch_size=64, decoder=CELL_DECODER,
                                progress=False)["accuracy"]


@dataclass
class Prepared:
    """What every cell of an invocation shares: the student's SFT folder and the teachers' folders."""

    sft_dir: Path
    teacher_dirs: dict[str, Path] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_digest: str = ""  # `tiny_sft.student_digest` of sft_dir: the student every cell trains


def is_current(record: dict[str, Any], ready: Prepared) -> bool:
    """A cached cell holds only for the student it trained: the SFT differs across machines, and cells of two
    students are not paired (cells from before the digest was recorded count as another student)."""
    return record.get("student_digest") == ready.student_digest


def ladder_record_path(settings: ControlSettings, cache_dir: str) -> Path:
    """Where the cell cache keeps how the ladder was made (its weights stay in the scratch folder)."""
    return Path(cache_dir) / TIER_NAME / "teachers" / f"ladder-{settings.ladder.key(settings.sft)}.json"


def prepare(settings: ControlSettings, cache_dir: str, scratch_dir: str, progress: bool) -> Prepared:
    """The student's SFT, the ladder, and every teacher's diagnosis (each cached; prints the profiles)."""
    sft_dir = prepare_sft(settings, cache_dir, scratch_dir, progress)
    ready = Prepared(sft_dir, teacher_ladder(settings, sft_dir, scratch_dir, progress),
                     student_digest=student_digest(sft_dir))
    print(f"[bench] control student: digest {ready.student_digest} (cells of another student are run again)")
    record = ladder_record_path(settings, cache_dir)
    stored = json.loads(record.read_text()) if record.exists() else {}
    if "heldout_accuracy" not in stored or stored.get("student_digest") != ready.student_digest:
        info = json.loads((ladder_folder(settings, scratch_dir, ready.student_digest) / LADDER_INFO_FILE).read_text())
        info["student_digest"] = ready.student_digest
        info["heldout_accuracy"] = {name: rung_heldout_accuracy(settings, folder)
                                    for name, folder in ready.teacher_dirs.items()}
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, info, indent=1)
    teachers = ((SELF, None), *ready.teacher_dirs.items())
    for name, folder in (*teachers, *((name + ANSWER, folder) for name, folder in teachers)):
        profile = ready.profiles[name] = characterise(settings, sft_dir, name, folder, cache_dir, scratch_dir)
        print(f"[bench] teacher {name}: gap AUC {num(profile['auc'])} ({int(profile['n_pairs'])} pairs), "
              f"flipped {num(profile['frac_flipped'])}")
    return ready


def run_control_cell(cell: Cell, settings: ControlSettings, scratch: Path, ready: Prepared) -> dict[str, Any]:
    """A tiny-tier cell whose `teacher_model` names a rung, resolved to that rung's folder."""
    overrides = dict(cell.config["overrides"])
    name = teacher_of(cell.method)
    rung = teacher_weights_of(name)
    if rung and rung != SELF:
        if rung not in ready.teacher_dirs:
            raise ValueError(f"{cell.method}: unknown teacher {rung!r}; the ladder has {', '.join(ready.teacher_dirs)}")
        overrides["teacher_model"] = str(ready.teacher_dirs[rung])
    result = run_tiny_cell(cell, settings, scratch, ready.sft_dir, overrides=overrides)
    return {**result, "teacher": name, "teacher_profile": ready.profiles.get(name), "student_digest": ready.student_digest}


def report_notes(settings: ControlSettings, cache_dir: str) -> list[str]:
    ladder, spec = settings.ladder, settings.diagnose
    notes = [f"Student: the tiny tier's SFT model. Teachers read the student's own prompt: `{SELF}` is the "
             "paper's self-teacher weights (a policy snapshot every 10 steps); "
             + ", ".join(f"`{n}`" for n in ladder.names())
             + " continue the student's SFT for that many more steps (frozen external `teacher_model`).",
             f"Each teacher is characterised before RL by `castrl diagnose`'s pipeline on {spec.n_prompts} RL training "
             f"problems x {spec.group_size} rollouts of the student at temperature {spec.temperature}: the gap AUC "
             "is P(a correct rollout's mean gap > a wrong one's) within mixed groups."]
    record = ladder_record_path(settings, cache_dir)
    if record.exists():
        info = json.loads(record.read_text())
        rungs = ", ".join(f"`{name}` {num(acc)}" for name, acc in info.get("monitor_accuracy", {}).items())
        held = ", ".join(f"`{name}` {num(acc)}" for name, acc in info.get("heldout_accuracy", {}).items())
        notes.append(f"Teacher ladder: greedy accuracy on {settings.sft.monitor_n_per_level} RL training problems per "
                     f"level (the student's SFT monitor set): {rungs}; on the cells' held-out problems: {held or 'not measured'} "
                     f"(the student: its step-0 accuracy below); {num(info.get('seconds'), 0)} s of SFT.")
        student = info.get("student_digest")
        files = sorted(record.parent.glob(f"*-{student}.json")) if student else []
        diagnosed = sorted((json.loads(p.read_text()) for p in files), key=lambda d: d.get("auc") or 0)
        if diagnosed:
            aucs = ", ".join(f"`{d['teacher']}` {num(d.get('auc'))}" for d in diagnosed)
            notes.append(f"Every teacher diagnosed for this student (gap AUC; cells or not): {aucs}. `+answer`: "
                         "the same weights reading the reference answer in the hinted prompt of the student's SFT "
                         "(`cast@teacher_context=with_answer`).")
    return notes


TIER = Tier(
    name=TIER_NAME, title="positive control: CAST with teachers of graded strength (tiny student, CPU)",
    about=__doc__.splitlines()[0], settings=SETTINGS, quick=QUICK, methods=grid(SETTINGS.ladder),
    quick_methods=("grpo", "cast", *(f"cast@teacher_model={n}" for n in QUICK.ladder.names())), seeds=5,
    quick_seeds=1, baseline="grpo", headline="cast", run_cell=run_control_cell, teachers=TEACHERS,
    prepare=prepare, notes=report_notes, is_current=is_current, threads=1,
    threads_help="torch CPU threads (1 is fastest for this model)",
)  # fmt: skip


def main(argv: list[str]) -> int:
    """`castrl bench control [flags]`: fill the missing cells of the grid."""
    return tier_main(TIER, argv)

