"""Metric correctness of ``prolora.eval.metrics`` against hand-computed values."""

from __future__ import annotations

import pytest

from prolora.eval.metrics import (
    bbh_exact_match,
    bbh_extract_answer,
    extract_choice_letter,
    gsm8k_reference,
    last_number,
    numbers_equal,
    pass_at_k,
    squad_exact_match,
    squad_f1,
)

# --------------------------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is 18.", "18"),  # sentence-final period is not a decimal point
        ("She earns $1,234.50 in total.", "1234.50"),  # thousands comma and currency
        ("The total is 1,000,000 dollars", "1000000"),
        ("The temperature dropped to -5 degrees.", "-5"),  # negative
        ("It is 3.75 now, then 0.5", "0.5"),  # decimals, last one wins
        ("He is 5-6 feet tall", "6"),  # a hyphen between numbers is not a sign
        ("Answer: 42\n\nQuestion: Tom has 3 apples", "3"),  # the *last* number, even in trailing text
        ("about .5 of it", ".5"),
        ("lists 1,2,3", "3"),  # not a thousands separator
        ("costs \u22127 now", "-7"),  # unicode minus sign
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "prediction, reference, equal",
    [
        ("18", "18", True),
        ("18.00", "18", True),
        ("18.5", "18", False),
        ("-5", "5", False),
        ("1234.50", "1234.5", True),
        (None, "3", False),
        (".5", "0.5", True),
    ],
)
def test_numbers_equal(prediction, reference, equal):
    assert numbers_equal(prediction, reference) is equal


def test_gsm8k_reference_strips_rationale_and_commas():
    assert gsm8k_reference("Janet sells 9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018") == "1018"


# ----------------------------------------------------------------------------------------------- BBH


@pytest.mark.parametrize(
    "output, target, correct",
    [
        ("(B).", "(B)", True),  # the 3-shot exemplars end answers with "."
        (" (B).\n\nQ: the next question", "(B)", True),  # only the first paragraph counts
        ("Let me see. So the answer is (C). Because", "(C)", True),
        ("False", "false", True),  # case is ignored
        ("True.", "False", False),
        ("The answer is (B)", "(B)", False),  # open-instruct's rule wants "So the answer is"
        ("valid", "invalid", False),
        ("dyck ] ) }", "] ) }", False),
    ],
)
def test_bbh_answer_extraction_and_exact_match(output, target, correct):
    assert bbh_exact_match(bbh_extract_answer(output), target) == float(correct)


def test_bbh_extract_answer_values():
    assert bbh_extract_answer("A: Let's think. So the answer is No. Done") == "No"
    assert bbh_extract_answer("  Yes\n\nNo") == "Yes"


# ---------------------------------------------------------------------------------------------- MMLU


@pytest.mark.parametrize(
    "output, letter",
    [
        ("B", "B"),
        (" (C)", "C"),
        ("D. Paris", "D"),
        ("The answer is (B).", "B"),
        ("answer: c", None),
        ("Answer: A", "A"),
        ("I think C is right", "C"),
        ("Because it is", None),
        ("none of them", None),
        ("The correct answer is D because", "D"),
    ],
)
def test_extract_choice_letter(output, letter):
    assert extract_choice_letter(output) == letter


# ------------------------------------------------------------------------------------------- TyDi QA


def test_squad_f1_and_em_hand_computed():
    # normalised: prediction [cat, sat], gold [cat, sat, down]: P = 1, R = 2/3, F1 = 0.8
    assert squad_f1("The cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    assert squad_exact_match("The cat sat", ["a cat sat down"]) == 0.0
    # best of several gold answers; articles, case and punctuation are ignored for EM
    assert squad_exact_match("The Cat.", ["dog", "cat"]) == 1.0
    assert squad_f1("dog house", ["cat", "dog"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert squad_f1("", ["cat"]) == 0.0
    # non-English text: only ASCII punctuation is removed (as in the official SQuAD script)
    assert squad_exact_match("1 مارس 1973", ["1 مارس 1973"]) == 1.0
    assert squad_f1("مارس", ["1 مارس 1973"]) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))


# ----------------------------------------------------------------------------------------- HumanEval


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (20, 1, 1, 0.05),
        (20, 7, 1, 0.35),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 9, 2, 1.0),  # fewer failures than k: every draw of k contains a pass
        (4, 1, 3, 0.75),  # 1 - C(3,3)/C(4,3)
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
