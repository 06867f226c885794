"""Benchmark data readers and prompts: the exact open-instruct prompt strings, exemplars, limits, errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from prolora.eval.benchmarks import bbh, gsm8k, humaneval, mmlu, tydiqa
from prolora.eval.hub import gsm8k_from_hub, humaneval_from_hub, mmlu_from_hub, read_hub, tydiqa_from_hub
from prolora.eval.prompts import Prompt, render
from prolora.eval.runner import read
from prolora.eval.settings import EvalSettings
from prolora.eval.sources import DataError, DataSources, read_humaneval

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SOURCES = DataSources.from_dir(str(FIXTURES))


class CharTokenizer:
    """One token per character, with a ChatML-like template: enough to test formatting and truncation."""

    chat_template = "chatml"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


TOK = CharTokenizer()


def docs(module, **settings):
    return module.build_docs(read(module.NAME, SOURCES.get(module.NAME)), EvalSettings(**settings), TOK)


# --------------------------------------------------------------------------------------------- formats


def test_render_formats():
    p = Prompt(user="Q?", assistant_prefix="Answer:", plain="Q?\nAnswer:")
    assert render(p, "tulu") == "<|user|>\nQ?\n<|assistant|>\nAnswer:"
    assert render(p, "none") == "Q?\nAnswer:"
    assert render(p, "template", TOK) == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nAnswer:"
    with pytest.raises(ValueError, match="chat template"):
        render(p, "template", object())


# ---------------------------------------------------------------------------------------- per benchmark


def test_mmlu_prompt_is_open_instructs_zero_shot_prompt():
    first = docs(mmlu)[0]
    assert first["prompt"] == (
        "<|user|>\nThe following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:\n<|assistant|>\nThe answer is:"
    )
    assert (first["answer"], first["answer_index"], first["category"]) == ("B", 1, "STEM")
    geography = [d for d in docs(mmlu) if d["subject"] == "high_school_geography"]
    assert {d["category"] for d in geography} == {"social sciences"}
    assert len(docs(mmlu, limit=2)) == 4  # 2 per subject


def test_bbh_prompt_strips_the_chain_of_thought():
    first = docs(bbh, chat_format="none")[0]
    assert first["prompt"] == (
        "Evaluate the result of a random Boolean expression.\n\n"
        "Q: not ( ( not not True ) ) is\nA: False.\n\n"
        "Q: True and False and not True and True is\nA: False.\n\n"
        "Q: not not ( not ( False ) ) is\nA: True.\n\n"
        "Q: not ( True ) and ( True ) is\nA:"
    )
    assert first["target"] == "False"
    assert docs(bbh)[0]["prompt"].endswith("\n\nQ: not ( True ) and ( True ) is\n<|assistant|>\nA:")


def test_bbh_rejects_a_prompt_file_without_exemplar_answers():
    with pytest.raises(DataError, match="So the answer is"):
        bbh.direct_answer_exemplars("toy", "canary\n-----\nDescribe.\n\nQ: 1 + 1\nA: 2")


def test_gsm8k_prompt_has_the_eight_exemplars():
    first = docs(gsm8k)[0]
    prompt = first["prompt"]
    assert prompt.startswith(
        "<|user|>\nAnswer the following questions.\n\nQuestion: There are 15 trees in the grove."
    )
    assert prompt.count("Question: ") == 9 and prompt.count("So the answer is") == 8
    assert prompt.endswith(
        "\nQuestion: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every "
        "morning and bakes muffins for her friends every day with four. She sells the remainder "
        "at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she "
        "make every day at the farmers' market?\n<|assistant|>\nAnswer:"
    )
    assert first["reference"] == "18"
    assert docs(gsm8k, chat_format="none")[0]["prompt"].endswith("farmers' market?\nAnswer:")


def test_gsm8k_stops_at_newline_only_without_chat():
    assert gsm8k.task([], EvalSettings(chat_format="none"))["generation_kwargs"]["until"] == ["\n"]
    assert gsm8k.task([], EvalSettings(chat_format="tulu"))["generation_kwargs"]["until"] == []


def test_tydiqa_exemplars_come_from_train_or_a_held_out_dev_question():
    all_docs = docs(tydiqa)
    english = [d for d in all_docs if d["language"] == "english"]
    arabic = [d for d in all_docs if d["language"] == "arabic"]
    assert len(english) == 3 and {d["exemplar_from"] for d in english} == {"train"}
    # no Arabic train file: the first dev question is the exemplar and is not scored
    assert len(arabic) == 2 and {d["exemplar_from"] for d in arabic} == {"dev"}
    assert arabic[0]["exemplar_id"] not in {d["id"] for d in arabic}
    prompt = arabic[0]["prompt"]
    assert prompt.startswith(
        "<|user|>\nأجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.\n\nالمقطع: "
    )
    assert prompt.count("المقطع: ") == 2 and prompt.endswith("\n\n<|assistant|>\nالإجابة:")
    assert docs(tydiqa, chat_format="none")[0]["prompt"].endswith("\nالإجابة:")


def test_tydiqa_truncates_passages_to_512_tokens():
    long = "word " * 300  # 1500 characters = 1500 tokens of the character tokenizer
    assert tydiqa.truncate(long, TOK) == long[:512]
    assert tydiqa.truncate("short", TOK) == "short"


def test_tydiqa_rejects_unknown_languages():
    record = {"id": "klingon-1-0", "language": "klingon", "context": "c", "question": "q", "answers": ["a"]}
    with pytest.raises(DataError, match="klingon"):
        tydiqa.build_docs({"klingon": {"dev": [record, record], "train": []}}, EvalSettings(), TOK)


def test_humaneval_prompts():
    tulu, plain = docs(humaneval)[0], docs(humaneval, chat_format="none")[0]
    problem = tulu["problem_prompt"]
    assert tulu["prompt"] == (
        "<|user|>\nComplete the following python function.\n\n\n"
        + problem
        + "\n<|assistant|>\nHere is the completed function:\n\n\n"
        + problem
    )
    assert plain["prompt"] == problem
    built = humaneval.program(tulu, "    return True\n")
    assert (built.source, built.test, built.entry_point) == (
        problem + "    return True\n\n",
        tulu["test"] + "\n",
        tulu["entry_point"],
    )


def test_limit_counts_per_subtask_and_size_counts_everything():
    assert len(docs(bbh, limit=1)) == 2 and len(docs(tydiqa, limit=1)) == 2 and len(docs(gsm8k, limit=1)) == 1
    assert tydiqa.size(read("tydiqa", SOURCES.tydiqa)) == 5  # the held-out Arabic exemplar is not counted
    assert bbh.size(read("bbh", SOURCES.bbh)) == 6


# ------------------------------------------------------------------------------------------- sources


def test_missing_data_names_the_path_and_the_flag(tmp_path):
    missing = DataSources.from_dir(str(tmp_path))
    with pytest.raises(DataError, match=r"GSM8K test file not found: .*gsm8k.*--gsm8k PATH.*--data-dir"):
        read("gsm8k", missing.gsm8k)
    with pytest.raises(DataError, match="no data configured for mmlu"):
        DataSources().get("mmlu")
    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    with pytest.raises(DataError, match="no cot-prompts/ subfolder"):
        read("bbh", str(tmp_path / "bbh"))


def test_malformed_files_are_reported(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "x_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n")
    with pytest.raises(DataError, match="expected 6 columns question,A,B,C,D,answer-letter"):
        read("mmlu", str(tmp_path))
    (tmp_path / "g.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match=r"lacks \['answer'\]"):
        read("gsm8k", str(tmp_path / "g.jsonl"))


def test_humaneval_reads_gzip_and_overrides_win(tmp_path):
    source = FIXTURES / "humaneval" / "HumanEval.jsonl"
    with open(source, "rb") as f, gzip.open(tmp_path / "HumanEval.jsonl.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    assert read_humaneval(str(tmp_path)) == read_humaneval(str(source))
    assert DataSources.from_dir(str(FIXTURES), humaneval=str(tmp_path)).humaneval == str(tmp_path)


# ----------------------------------------------------------------------------------------------- hub


def test_hub_rows_convert_to_the_local_records():
    assert mmlu_from_hub(
        [{"subject": "anatomy", "question": "q", "choices": ["a", "b", "c", "d"], "answer": 2}]
    ) == {"anatomy": [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "C"}]}
    assert gsm8k_from_hub([{"question": "q", "answer": "x\n#### 3", "extra": 1}]) == [
        {"question": "q", "answer": "x\n#### 3"}
    ]
    problem = {
        "task_id": "HumanEval/0",
        "prompt": "p",
        "entry_point": "f",
        "canonical_solution": "s",
        "test": "t",
    }
    assert humaneval_from_hub([problem]) == [problem]
    row = {
        "id": "swahili-1-0",
        "context": "c",
        "question": "q",
        "answers": {"text": ["a"], "answer_start": [0]},
    }
    converted = tydiqa_from_hub([row], [])
    assert converted == {
        "swahili": {
            "dev": [
                {
                    "id": "swahili-1-0",
                    "language": "swahili",
                    "context": "c",
                    "question": "q",
                    "answers": ["a"],
                }
            ],
            "train": [],
        }
    }


def test_bbh_is_not_read_from_the_hub():
    with pytest.raises(DataError, match="cannot be read from the Hugging Face Hub"):
        read_hub("bbh", "lukaemon/bbh")
