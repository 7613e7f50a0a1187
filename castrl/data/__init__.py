"""Problems for CAST training and evaluation: the built-in arithmetic suite, file/dataset loaders,
student prompt styles and the TRL dataset. See ``loaders`` for the dataset spec grammar.

Records stay raw (``problem``/``answer``/``solution`` without prompt wrapping) so the teacher can
build its own contexts; loading validates every row and raises ``DataError`` before any model loads.
"""

from .arithmetic import DEFAULT_LEVELS, LEVELS, make_arithmetic
from .loaders import PRESETS, load_dataset_object, load_file, load_problems, parse_spec
from .prompts import BOXED_SUFFIX, STYLES, build_prompt, to_trl_dataset
from .records import DataError, Problem, last_boxed

__all__ = [
    "BOXED_SUFFIX",
    "DEFAULT_LEVELS",
    "LEVELS",
    "PRESETS",
    "STYLES",
    "DataError",
    "Problem",
    "build_prompt",
    "last_boxed",
    "load_dataset_object",
    "load_file",
    "load_problems",
    "make_arithmetic",
    "parse_spec",
    "to_trl_dataset",
]
