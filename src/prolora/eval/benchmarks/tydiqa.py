"""TyDi QA GoldP (Clark et al. 2020), 1-shot with the gold passage, F1 and EM per language and averaged.

Protocol: open-instruct ``eval/tydiqa/run_eval.py``: an instruction, ``Passage:``/``Question:``/``Answer:``
labels in the question's language (its templates, below), one exemplar of the same language, passages
cut to their first 512 tokens, SQuAD F1/EM; the average is the mean over languages.

The exemplar is the first question of the language's train file. open-instruct samples it from the
official train set, which covers all nine languages; where ``train/`` lacks a language (the project's
data has train files for English, Korean and Swahili only), the exemplar is that language's first *dev*
question, which is then not scored.
"""

from __future__ import annotations

from ..metrics import squad_exact_match, squad_f1
from ..prompts import Prompt, render
from ..settings import EvalSettings
from ..sources import DataError
from .common import by_key, first, percent, response, task_config

NAME = "tydiqa"
TITLE = "TyDi QA"
MAX_CONTEXT_TOKENS = 512

# language -> (instruction, passage label, question label, answer label), from open-instruct
TEMPLATES = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": (
        "أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
        "المقطع:",
        "السؤال:",
        "الإجابة:",
    ),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": (
        "Ответьте на следующий вопрос на основе информации в данном отрывке.",
        "Отрывок:",
        "Вопрос:",
        "Ответ:",
    ),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}


def exemplar_and_questions(language: str, data: dict[str, list[dict]]) -> tuple[dict, list[dict], str]:
    """(exemplar, scored questions, where the exemplar comes from: ``train`` or ``dev``)."""
    if data["train"]:
        return data["train"][0], data["dev"], "train"
    if len(data["dev"]) < 2:
        raise DataError(
            f"TyDi QA {language}: no train file and fewer than two dev questions, so no exemplar "
            f"can be held out. Add train/{language}_tydiqa_train.json under the --tydiqa folder."
        )
    return data["dev"][0], data["dev"][1:], "dev"


def truncate(text: str, tokenizer) -> str:
    """The first :data:`MAX_CONTEXT_TOKENS` tokens of ``text`` (open-instruct ``--max_context_length``)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= MAX_CONTEXT_TOKENS else tokenizer.decode(ids[:MAX_CONTEXT_TOKENS])


def demonstration(language: str, exemplar: dict, tokenizer) -> str:
    """The 1-shot block: passage, question and first gold answer of the exemplar."""
    _, passage, question, answer = TEMPLATES[language]
    return (
        f"{passage} {truncate(exemplar['context'], tokenizer)}\n{question} {exemplar['question']}\n"
        f"{answer} {exemplar['answers'][0]}"
    )


def prompt(language: str, demo: str, record: dict, tokenizer) -> Prompt:
    instruction, passage, question, answer = TEMPLATES[language]
    body = (
        f"{instruction}\n\n{demo}\n\n"
        f"{passage} {truncate(record['context'], tokenizer)}\n{question} {record['question']}\n"
    )
    return Prompt(user=body, assistant_prefix=answer, plain=body + answer)


def _check_languages(languages) -> None:
    unknown = sorted(set(languages) - set(TEMPLATES))
    if unknown:
        raise DataError(
            f"TyDi QA: no prompt template for language(s) {unknown}; supported: {sorted(TEMPLATES)}"
        )


def size(languages: dict[str, dict]) -> int:
    return sum(len(exemplar_and_questions(lang, data)[1]) for lang, data in languages.items())


def build_docs(languages: dict[str, dict], settings: EvalSettings, tokenizer) -> list[dict]:
    _check_languages(languages)
    docs = []
    for language, data in languages.items():
        exemplar, questions, origin = exemplar_and_questions(language, data)
        demo = demonstration(language, exemplar, tokenizer)
        for record in first(questions, settings.limit):
            docs.append(
                {
                    "id": record["id"],
                    "language": language,
                    "answers": record["answers"],
                    "first_answer": record["answers"][0],
                    "exemplar_id": exemplar["id"],
                    "exemplar_from": origin,
                    "prompt": render(
                        prompt(language, demo, record, tokenizer), settings.chat_format, tokenizer
                    ),
                }
            )
    return docs


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    output = results[0].strip()
    return {"f1": squad_f1(output, doc["answers"]), "exact_match": squad_exact_match(output, doc["answers"])}


def task(docs: list[dict], settings: EvalSettings) -> dict:
    until = ["\n"] if settings.chat_format == "none" else []
    return task_config(
        "tydiqa", docs, settings, process_results=process_results, generation_kwargs={"until": until}
    )


def summarize(samples: list[dict]) -> dict:
    """F1 and EM in percent per language, and their means over languages."""
    per_language = {
        lang: {
            "f1": percent(s["f1"] for s in group),
            "exact_match": percent(s["exact_match"] for s in group),
            "n": len(group),
            "exemplar": f"{group[0]['doc']['exemplar_from']}:{group[0]['doc']['exemplar_id']}",
        }
        for lang, group in sorted(by_key(samples, "language").items())
    }

    def mean(metric):
        return sum(v[metric] for v in per_language.values()) / len(per_language) if per_language else 0.0

    return {
        "f1": mean("f1"),
        "exact_match": mean("exact_match"),
        "n": len(samples),
        "per_language": per_language,
    }


def prediction(sample: dict) -> dict:
    doc = sample["doc"]
    return {
        "id": doc["id"],
        "language": doc["language"],
        "prompt": doc["prompt"],
        "response": response(sample),
        "answers": doc["answers"],
        "f1": sample["f1"],
        "exact_match": sample["exact_match"],
    }
