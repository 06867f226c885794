"""Data: the Tulu chat format, assistant-only loss masks, readers' error reports, the embedded set.

Uses the real SmolLM2 tokenizer of the embedded model (EOS ``<|im_end|>``), loaded once per module.
"""

from __future__ import annotations

import json
import os

import pytest

from prolora.data import IGNORE_INDEX, encode, load_splits, read_source, render
from prolora.data.readers import embedded_path

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5.\nSo the answer is 5."},
    {"role": "user", "content": " And 4 + 4? "},
    {"role": "assistant", "content": "8"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from prolora.base_models import load_tokenizer

    return load_tokenizer()


def trained_runs(enc) -> list[list[int]]:
    """The maximal runs of consecutive labelled tokens."""
    runs, current = [], []
    for tok, label in zip(enc["input_ids"], enc["labels"], strict=False):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == tok, "a labelled position must carry its own input token"
            current.append(tok)
    return runs + ([current] if current else [])


def test_tulu_text_is_open_instruct_format(tokenizer):
    text, _ = render(tokenizer, CONVERSATION, "tulu")
    assert text == (
        "<|system|>\nYou are terse.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n2 + 3 = 5.\n"
        "So the answer is 5.<|im_end|>\n<|user|>\nAnd 4 + 4?\n<|assistant|>\n8<|im_end|>\n"
    )
    prompt, _ = render(tokenizer, CONVERSATION[:2], "tulu", add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is 2 + 3?\n<|assistant|>\n")


def test_tulu_loss_is_on_assistant_tokens_and_eos_only(tokenizer):
    enc = encode(tokenizer, CONVERSATION, max_length=512, chat_format="tulu")
    runs = trained_runs(enc)
    assert [tokenizer.decode(run) for run in runs] == [
        "2 + 3 = 5.\nSo the answer is 5.<|im_end|>",
        "8<|im_end|>",
    ]
    assert all(run[-1] == tokenizer.eos_token_id for run in runs)
    masked = [
        tok for tok, label in zip(enc["input_ids"], enc["labels"], strict=False) if label == IGNORE_INDEX
    ]
    assert tokenizer.decode(masked) == (
        "<|system|>\nYou are terse.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n\n"
        "<|user|>\nAnd 4 + 4?\n<|assistant|>\n\n"
    )
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"])
    assert not enc["truncated"]


def test_chat_template_loss_is_on_assistant_turns(tokenizer):
    enc = encode(tokenizer, CONVERSATION, max_length=512, chat_format="template")
    assert [tokenizer.decode(run) for run in trained_runs(enc)] == [
        "2 + 3 = 5.\nSo the answer is 5.<|im_end|>",
        "8<|im_end|>",
    ]
    assert tokenizer.decode(enc["input_ids"]).startswith("<|im_start|>system\nYou are terse.<|im_end|>")


def test_truncation_keeps_the_first_tokens(tokenizer):
    full = encode(tokenizer, CONVERSATION, max_length=512)
    cut = encode(tokenizer, CONVERSATION, max_length=20)
    assert (
        cut["truncated"]
        and cut["input_ids"] == full["input_ids"][:20]
        and cut["labels"] == full["labels"][:20]
    )


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_jsonl_reader_reports_bad_records_with_line_numbers(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            json.dumps(good),  # 1 ok
            "{not json",  # 2
            "",  # 3 blank: ignored
            json.dumps({"prompt": "x"}),  # 4 unknown format
            json.dumps(
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
            ),  # 5 empty answer
            json.dumps({"messages": [{"role": "bot", "content": "q"}]}),  # 6 unknown role
            json.dumps({"instruction": "Add.", "input": "1 and 2", "output": "3"}),  # 7 Alpaca ok
            json.dumps([1, 2]),  # 8 not an object
        ],
    )
    records, issues = read_source(path)
    assert [r.origin for r in records] == [f"{path} line 1", f"{path} line 7"]
    assert records[1].messages == [
        {"role": "user", "content": "Add.\n\n1 and 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert [(i.origin.rsplit(" line ", 1)[1], i.action) for i in issues] == [
        ("2", "skipped"),
        ("4", "skipped"),
        ("5", "skipped"),
        ("6", "skipped"),
        ("8", "skipped"),
    ]
    assert "Alpaca" in issues[1].problem and "assistant" in issues[2].problem and "role" in issues[3].problem
    # one position only: the column within the line ("{not json": a property name expected at column 2)
    assert str(issues[0]) == (
        f"{path} line 2: invalid JSON (Expecting property name enclosed in double quotes "
        "at column 2) (skipped)"
    )


def test_json_array_alpaca_reader(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}, {"output": "x"}]))
    records, issues = read_source(str(path))
    assert records[0].messages[0] == {"role": "user", "content": "Say hi."}
    assert [i.origin for i in issues] == [f"{path}[1]"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_source(str(tmp_path / "nope.jsonl"))


def test_splits_report_overlong_records_and_split_off_heldout(tokenizer, tmp_path):
    long_prompt = {
        "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    }
    long_answer = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 300}]
    }
    short = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(10)]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(x) for x in [long_prompt, long_answer, *short]])
    splits = load_splits(tokenizer, path, heldout_size=3, max_length=64)
    assert len(splits.heldout) == 3 and len(splits.train) + len(splits.heldout) == 11
    by_line = {i.origin.rsplit(" line ", 1)[1]: i for i in splits.issues}
    assert by_line["1"].action == "skipped" and "no assistant token" in by_line["1"].problem
    assert by_line["2"].action == "truncated"
    assert max(len(x) for x in splits.train["input_ids"]) <= 64


def test_no_usable_record_is_a_clear_error(tokenizer, tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ["{bad", json.dumps({"x": 1})])
    with pytest.raises(ValueError, match="no usable training example in .*d.jsonl line 1: invalid JSON"):
        load_splits(tokenizer, path, heldout_size=0)


def test_an_all_bad_file_names_each_problem_once(tokenizer, tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ["", "not json", "not json", "{", json.dumps({"x": 1}), "nope"])
    with pytest.raises(ValueError) as error:
        load_splits(tokenizer, path)
    message = str(error.value)
    assert message.count("invalid JSON (Expecting value at column 1)") == 1, message
    assert f"{path} line 2 (and 2 more): invalid JSON (Expecting value at column 1) (skipped)" in message
    assert f"{path} line 4: invalid JSON" in message and "neither a 'messages' list" in message
    assert "5 record(s) skipped" in message


def conversations(n: int) -> list[str]:
    return [json.dumps({"instruction": f"Say {i}.", "output": str(i)}) for i in range(n)]


@pytest.mark.parametrize(
    ("n", "size", "expected", "said"),
    [
        (9, None, 0, "too few"),  # under 10 usable examples: no held-out split, training still runs
        (30, None, 3, "3 drawn out of the data"),  # one in ten
        (1000, None, 64, "64 drawn"),  # at most 64
        (30, 5, 5, "(--heldout-size)"),  # explicit
        (30, 0, 0, "--heldout-size 0"),
    ],
)
def test_heldout_size_adapts_to_small_data_and_says_so(tokenizer, tmp_path, n, size, expected, said):
    path = write_lines(tmp_path / "d.jsonl", conversations(n))
    splits = load_splits(tokenizer, path, heldout_size=size, max_length=64)
    assert (0 if splits.heldout is None else len(splits.heldout)) == expected
    assert len(splits.train) == n - expected and said in splits.heldout_note


def test_explicit_heldout_size_larger_than_the_data_is_an_error(tokenizer, tmp_path):
    path = write_lines(tmp_path / "d.jsonl", conversations(9))
    with pytest.raises(ValueError, match=r"--heldout-size 9 needs more usable examples .*\(it has 9\)"):
        load_splits(tokenizer, path, heldout_size=9)


def test_embedded_set_is_small_licensed_and_clean(tokenizer):
    folder = os.path.dirname(embedded_path("train"))
    assert {"LICENSE", "SOURCE.md", "flan_cot_train.jsonl", "flan_cot_heldout.jsonl"} <= set(
        os.listdir(folder)
    )
    assert sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) < 5_000_000
    train, train_issues = read_source(None, "train")
    heldout, heldout_issues = read_source(None, "heldout")
    assert len(train) > 4000 and len(heldout) == 128 and not train_issues and not heldout_issues

    def sources(split):
        with open(embedded_path(split), encoding="utf-8") as f:
            return {json.loads(line)["source"] for line in f}

    assert not sources("train") & sources("heldout")


def test_unknown_dataset_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="not a local file, and loading it as a Hugging Face dataset failed"
    ):
        read_source("no-such-user/no-such-dataset:train")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    # before: the first record was "invalid JSON (Expecting value at column 1)"
    record = {"instruction": "Say hi.", "output": "Hi."}
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(record) + "\n").encode() * 2)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())
    records, issues = read_source(str(tmp_path / "bom.jsonl"))
    assert (len(records), issues) == (2, [])
    assert records[0].messages == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
    ]
    records, issues = read_source(str(tmp_path / "bom.json"))
    assert (len(records), issues) == (1, [])


def test_a_record_over_the_byte_cap_is_cut_before_tokenizing_and_keeps_its_first_tokens(tokenizer, tmp_path):
    from prolora.data.readers import MAX_RECORD_BYTES

    question = "Why is the sky blue? " * 10
    answer = "Rayleigh scattering, é. " * (MAX_RECORD_BYTES // 20)  # 1.3 MB, 'é' is two bytes
    at_cap = "x" * (MAX_RECORD_BYTES - len(question))
    write_lines(
        tmp_path / "long.jsonl",
        [
            json.dumps({"instruction": question, "output": at_cap}),  # exactly at the cap: untouched
            json.dumps({"instruction": question, "output": answer}),
        ],
    )
    records, issues = read_source(str(tmp_path / "long.jsonl"))
    assert records[0].messages[1]["content"] == at_cap
    cut = records[1].messages
    assert len("".join(m["content"] for m in cut).encode()) in (MAX_RECORD_BYTES, MAX_RECORD_BYTES - 1)
    assert cut[0]["content"] == question.strip() and answer.startswith(cut[1]["content"])
    assert [(i.origin, i.action) for i in issues] == [(f"{tmp_path / 'long.jsonl'} line 2", "truncated")]
    size = len(question.strip().encode()) + len(answer.encode())
    assert f"{size:,} bytes of text, over the cap of {MAX_RECORD_BYTES:,}" in issues[0].problem
    # what training keeps (the first max_length tokens) is the same as from the whole record
    whole = [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": answer}]
    assert encode(tokenizer, cut, 512)["input_ids"] == encode(tokenizer, whole, 512)["input_ids"]


@pytest.mark.parametrize(
    ("split", "count", "chat_format", "sha256"),
    [
        ("heldout", None, "tulu", "ad98a8451ab34453e66b5c82af74a2079a40fcd4b3bc84b94e8356bc0e7185d4"),
        ("heldout", None, "template", "188e995fa3d1c9af0e8fcbb3d4386d3d7dfdfdda1c4ea2656367235b45046b43"),
        ("train", 500, "tulu", "c229c5cd1bcf1528557d176d730a8f11b818519f164182e89449d3d018837163"),
    ],
)
def test_records_within_the_cap_tokenize_as_the_committed_results_did(
    tokenizer, split, count, chat_format, sha256
):
    """Token ids and labels of the embedded set, pinned as computed before the byte cap and the BOM-aware
    readers (2026-12-07), so that the recorded results stay reproducible."""
    import hashlib

    from prolora.data import tokenize_records

    records, issues = read_source(None, split)
    dataset, token_issues = tokenize_records(records[:count], tokenizer, 512, chat_format)
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    assert (issues, token_issues, digest.hexdigest()) == ([], [], sha256)
