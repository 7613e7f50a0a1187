"""The layout rules of docs/architecture.md hold, and the checks can fail: no module over 400 lines, no
import between bench tiers, from the bench into `castrl.commands` or from a bench runner into its report;
one `model.generate` call site and one chat-template renderer outside the host adapters."""

from __future__ import annotations

from .layout_rules import (
    bench_violations,
    call_sites,
    calls_outside,
    import_graph,
    imported_names,
    long_modules,
    source_files,
)


def test_no_module_is_over_400_lines():
    assert long_modules() == {}


def test_bench_tiers_import_no_other_tier_and_the_bench_no_command():
    graph = import_graph("castrl.bench")
    assert "castrl.bench.common.tiny_student" in graph["castrl.bench.tiers.control"]  # the check sees the imports
    assert bench_violations(graph) == []


def test_the_bench_rules_catch_a_violation():
    """A tier importing another tier, a suite importing a command module (inside a function, relatively
    spelled or not) and a tier importing report code are each reported."""
    sources = {
        "castrl.bench.tiers.control": "from castrl.bench.tiers.tiny import SETTINGS\n",
        "castrl.bench.tiers.tiny": "def f():\n    from ..report import results\n",
        "castrl.bench.suites.steptime": "def f():\n    from castrl.commands.train import parse_args\n",
        "castrl.bench.suites.core": "from castrl.commands import user_input\nfrom castrl.command_line import user_input\n",
        "castrl.bench.common.cells": "from .tier import Tier\n",  # allowed: common imports common
        "castrl.bench.common.smol": "from ..tiers import smollm2\n",
    }
    graph = {name: imported_names(text, name) for name, text in sources.items()}
    found = bench_violations(graph)
    assert any("tier castrl.bench.tiers.control imports tier castrl.bench.tiers.tiny" in f for f in found)
    assert any("runner castrl.bench.tiers.tiny imports report code castrl.bench.report" in f for f in found)
    assert any("castrl.bench.suites.steptime imports the command module castrl.commands.train" in f for f in found)
    assert any("castrl.bench.suites.core imports the command module castrl.commands" in f for f in found)
    assert any("common module castrl.bench.common.smol imports castrl.bench.tiers.smollm2" in f for f in found)
    assert not any("castrl.bench.common.cells" in f or "command_line" in f for f in found)


def test_one_generate_call_site_outside_the_host_adapters():
    """`model.generate` is called in castrl.rollouts.generate only (TRL and verl keep their own engines)."""
    assert calls_outside("generate", "castrl.rollouts") == {}
    sites = {name: call_sites(path.read_text(), "generate") for name, path in source_files().items()
             if name.startswith("castrl.rollouts")}
    assert {name: len(lines) for name, lines in sites.items() if lines} == {"castrl.rollouts.generate": 1}


def test_one_prompt_renderer_outside_the_host_adapters():
    """Prompts become text and ids through castrl.rollouts.render only (the hosts tokenise their own way)."""
    assert calls_outside("apply_chat_template", "castrl.rollouts") == {}
    text = source_files()["castrl.rollouts.render"].read_text()
    assert len(call_sites(text, "apply_chat_template")) == 1


def test_the_call_site_count_catches_a_second_generate():
    code = "def sample(model, ids):\n    return model.generate(input_ids=ids)\n\n\nx = model.generate(ids)\n"
    assert call_sites(code, "generate") == [2, 5]
    assert call_sites("generate_completions(model)\n", "generate") == []  # a function named so is not a call site
