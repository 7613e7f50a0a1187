"""The answer a completion gives and the answer a gold holds, as short strings (string-level only).

Why before math-verify: its own boxed mode joins *all* boxes into a set, and sympy can spend minutes on
adversarial text; here the last `\\boxed{}` wins (braces matched), and only the last characters of a
completion, answers of bounded length and digit runs are read, so the verifier gets one short string.
"""

from __future__ import annotations

import re

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# `\\` and `\{`/`\}` are escapes, not structure: consume them as single tokens.
_BRACE_TOKEN_RE = re.compile(r"\\[\\{}]|[{}]")
# Thousands groups first ("6,966"), then plain digits; optional decimals and "/d" fraction.
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`; "" when it never closes (a truncated answer), None if no box."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    depth = 1
    for tok in _BRACE_TOKEN_RE.finditer(text, starts[-1]):
        if tok.group() == "{":
            depth += 1
        elif tok.group() == "}":
            depth -= 1
            if depth == 0:
                return text[starts[-1]:tok.start()].strip()
    return ""


def extract_final_answer(text: str, *, max_chars: int = 10_000, max_answer_chars: int = 500,
                         max_digits: int = 100, require_boxed: bool = False) -> str | None:
    """The completion's final answer string, or None (scored 0.0) when there is none or it is absurd.

    Order: the last `\\boxed{}` (even if empty: a model that ends with `\\boxed{}` answered nothing);
    without a box and unless `require_boxed`, the line after the last `####`, else the last number,
    the fallback math-verify itself uses. Only the last `max_chars` characters are read, and answers
    longer than `max_answer_chars` or with a digit run over `max_digits` are rejected, so 1 MB strings
    and million-digit numbers cost microseconds here instead of minutes in sympy.
    """
    if not isinstance(text, str):
        raise TypeError(f"completion must be a str, got {type(text).__name__}; pass the decoded text")
    text = text[-max_chars:]
    answer = _last_boxed(text)
    if answer is None and not require_boxed:
        if "####" in text:
            answer = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
        else:
            numbers = _NUMBER_RE.findall(text)
            answer = numbers[-1] if numbers else None
    if not answer or len(answer) > max_answer_chars or re.search(rf"\d{{{max_digits + 1}}}", answer):
        return None
    return answer


def normalize_gold(gold: object, *, max_answer_chars: int = 500) -> str | None:
    """The gold answer as a short string, or None when no answer can be located in it.

    Accepts bare answers ("42", "\\frac{1}{2}", 7), GSM8K solutions ("... #### 1,234" -> "1234") and
    MATH solutions (last `\\boxed{}`). Surrounding `$`, a final period and thousands commas go. This is
    string-level only; a gold that math-verify then cannot parse is also scored None by `Verifier`.
    """
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        gold = str(gold)
    if not isinstance(gold, str):
        raise TypeError(f"gold answer must be a str or number, got {type(gold).__name__}: {gold!r:.80}")
    text = gold
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    elif _BOXED_RE.search(text):
        text = _last_boxed(text) or ""
    text = text.strip().rstrip(".").strip().strip("$").strip()
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if not text or len(text) > max_answer_chars or not any(c.isalnum() for c in text):
        return None
    return text
