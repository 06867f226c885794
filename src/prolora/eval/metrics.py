"""Answer extraction and metrics of the five benchmarks, as pure functions over strings and counts.

Each function names the protocol it reproduces. The PRoLoRA paper (Appendix A) follows the evaluation of
Wang et al. 2023, "How Far Can Camels Go?", i.e. the ``eval/`` scripts of ``allenai/open-instruct``;
"open-instruct" below means those scripts.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation

# --------------------------------------------------------------------------------------------- GSM8K

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d+(?:\.\d+)?|\.\d+)")


def gsm8k_reference(answer: str) -> str:
    """The gold number of a GSM8K ``answer`` field: the text after ``####``, without thousands commas."""
    return _DIGIT_COMMA.sub("", answer.split("####")[-1].strip())


def last_number(text: str) -> str | None:
    """The last number in ``text`` (open-instruct's GSM rule: EM "of the last number of the response").

    Thousands separators are removed first (``1,234`` -> ``1234``); currency signs and units around the
    number are ignored; a leading minus and decimals are kept (``-3.50``); a sentence-final period is not
    part of the number (``18.`` -> ``18``). Returns ``None`` when ``text`` has no number.
    """
    numbers = _NUMBER.findall(_DIGIT_COMMA.sub("", text.replace("\u2212", "-")))
    return numbers[-1] if numbers else None


def numbers_equal(prediction: str | None, reference: str) -> bool:
    """Numeric equality of two decimal strings (``"18.00" == "18"``, ``"-5" != "5"``).

    open-instruct compares the strings after deleting punctuation, which turns ``18.00`` into ``1800``
    and drops minus signs; comparing values avoids both errors and agrees with it everywhere else.
    """
    if prediction is None:
        return False
    try:
        return Decimal(prediction) == Decimal(reference)
    except InvalidOperation:
        return False


# ----------------------------------------------------------------------------------------------- BBH

_SO_THE_ANSWER_IS = re.compile(r"So the answer is (.*?)\.")


def bbh_extract_answer(output: str) -> str:
    """open-instruct's BBH answer: the text between ``So the answer is`` and the next period if present,
    else the first paragraph of the output (both stripped)."""
    found = _SO_THE_ANSWER_IS.search(output)
    if found:
        return found.group(1).strip()
    return output.strip().split("\n\n")[0].strip()


def bbh_exact_match(prediction: str, target: str) -> float:
    """Exact match ignoring case and ASCII punctuation (Hugging Face ``evaluate``'s ``exact_match`` with
    ``ignore_case=True, ignore_punctuation=True``, as open-instruct scores BBH): ``"(A)."`` matches ``"(A)"``."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return float(
        exact_match_hf_evaluate([prediction], [target], ignore_case=True, ignore_punctuation=True)[
            "exact_match"
        ]
    )


# ---------------------------------------------------------------------------------------------- MMLU

MMLU_LETTERS = ("A", "B", "C", "D")
_ANSWER_IS_LETTER = re.compile(r"(?i:answer)(?: is)?\s*[:\-]?\s*\(?([ABCD])\b(?!')")
_LEADING_LETTER = re.compile(r"^\W*([ABCD])(?:\W|$)")
_LONE_LETTER = re.compile(r"(?<![\w'])\(?([ABCD])\)?(?![\w'])")


def extract_choice_letter(output: str) -> str | None:
    """The answer letter (A-D) in a free-form MMLU response, for ``--mmlu-scoring generate``.

    Tried in order: ``answer is (B)`` / ``Answer: B``; a letter opening the response (``B``, ``(B)``,
    ``B. Paris``); else the first stand-alone capital A-D (``I think C``). The article "A" at the start of
    a sentence is a known false positive of the last rule. Returns ``None`` when no letter is found.
    """
    for pattern in (_ANSWER_IS_LETTER, _LEADING_LETTER, _LONE_LETTER):
        found = pattern.search(output)
        if found:
            return found.group(1)
    return None


# ------------------------------------------------------------------------------------------- TyDi QA

_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 answer normalisation (official ``evaluate-v1.1.py``, used by open-instruct via
    ``evaluate.load("squad")``): lower case, drop ASCII punctuation and English articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, gold_answers: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    return float(any(squad_normalize(prediction) == squad_normalize(g) for g in gold_answers))


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, gold_answers: list[str]) -> float:
    """SQuAD token F1: the best bag-of-tokens F1 against any gold answer."""
    return max(_token_f1(prediction, g) for g in gold_answers)


# ----------------------------------------------------------------------------------------- HumanEval


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. 2021 (Codex paper, eq. 1): ``1 - C(n-c, k) / C(n, k)``
    for ``c`` correct samples out of ``n``, computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
