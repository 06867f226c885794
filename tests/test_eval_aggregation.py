"""How per-example scores become the reported numbers: macro or micro averages, per-sub-task tables."""

from __future__ import annotations

import pytest

from prolora.eval.benchmarks import bbh, humaneval, mmlu, tydiqa
from prolora.eval.report import paper_average
from prolora.eval.sandbox import RunResult


def test_bbh_average_is_the_mean_over_tasks():
    samples = [
        {"doc": {"task": "a"}, "exact_match": 1.0},
        {"doc": {"task": "a"}, "exact_match": 0.0},
        {"doc": {"task": "b"}, "exact_match": 1.0},
    ]
    summary = bbh.summarize(samples)
    assert summary["per_task"] == {"a": {"exact_match": 50.0, "n": 2}, "b": {"exact_match": 100.0, "n": 1}}
    assert summary["exact_match"] == pytest.approx(75.0)  # not the 66.7 of pooling all examples


def test_mmlu_averages_pool_questions():
    def sample(subject, category, acc):
        return {"doc": {"subject": subject, "subcategory": subject, "category": category}, "acc": acc}

    samples = [
        sample("x", "STEM", 1.0),
        sample("x", "STEM", 1.0),
        sample("y", "STEM", 0.0),
        sample("z", "humanities", 0.0),
    ]
    summary = mmlu.summarize(samples)
    assert summary["exact_match"] == 50.0
    assert summary["per_category"]["STEM"] == {"exact_match": pytest.approx(200 / 3), "n": 3}
    assert summary["per_subject"]["y"] == {"exact_match": 0.0, "n": 1}


def test_mmlu_generate_scoring_extracts_the_letter():
    doc = {"answer": "C", "id": "s/0", "subject": "s", "prompt": "p"}
    assert mmlu.process_generated(doc, ["The answer is (C)."]) == {"acc": 1.0}
    assert mmlu.process_generated(doc, ["B"]) == {"acc": 0.0}
    row = mmlu.prediction({"doc": doc, "filtered_resps": ["(C) because"], "acc": 1.0})
    assert row["prediction"] == "C" and row["response"] == "(C) because" and row["correct"] is True


def test_tydiqa_averages_over_languages():
    def sample(language, f1, em):
        return {
            "doc": {"language": language, "exemplar_from": "dev", "exemplar_id": "e"},
            "f1": f1,
            "exact_match": em,
        }

    summary = tydiqa.summarize(
        [sample("english", 1.0, 1.0), sample("english", 0.5, 0.0), sample("arabic", 0.0, 0.0)]
    )
    assert summary["per_language"]["english"]["f1"] == 75.0
    assert summary["f1"] == pytest.approx(37.5) and summary["exact_match"] == pytest.approx(25.0)


def test_tydiqa_scores_the_stripped_response():
    doc = {"answers": ["45 million", "45 million"]}
    assert tydiqa.process_results(doc, ["  45 million\n"]) == {"f1": 1.0, "exact_match": 1.0}


def test_humaneval_pass_at_1_averages_problem_estimates():
    def sample(statuses):
        runs = [RunResult(s, "", 0.0, "seccomp") for s in statuses]
        return {"runs": runs, "pass@1": sum(r.passed for r in runs) / len(runs)}

    summary = humaneval.summarize([sample(["passed", "failed"]), sample(["failed", "timeout"])])
    assert summary == {"pass@1": 25.0, "n": 2, "samples_per_problem": 2}


def test_paper_average_needs_all_six_columns():
    scores = {
        "mmlu": {"exact_match": 40.0},
        "bbh": {"exact_match": 30.0},
        "gsm8k": {"exact_match": 20.0},
        "tydiqa": {"f1": 50.0, "exact_match": 35.0},
        "humaneval": {"pass@1": 15.0},
    }
    assert paper_average(scores) == pytest.approx(190 / 6)
    del scores["bbh"]
    assert paper_average(scores) is None
