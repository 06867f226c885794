"""``prolora eval`` end to end on a tiny random Llama with a byte-level tokenizer and a LoRA adapter.

Scores of a random model are ~0; the tests check the files and their structure, recompute every score
from the predictions, and check MMLU's letter choice against an independent forward pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prolora.cli import main
from prolora.eval import metrics
from prolora.eval.loss import heldout_loss

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
BENCHMARKS = ("mmlu", "bbh", "gsm8k", "tydiqa", "humaneval")


def make_tiny_model():
    """A 2-layer Llama over a byte-level tokenizer (every string encodes, 257 tokens), long context."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    eos = vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Directories of the tiny model and of a (non-zero) LoRA adapter on it, and a held-out file."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("tiny")
    model, tokenizer = make_tiny_model()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(1)
    get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(root / "adapter")
    (root / "heldout.jsonl").write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}
        )
        + "\n"
        + json.dumps({"instruction": "Add 1 and 2", "output": "3"})
        + "\n"
    )
    return root


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    code = main(
        [
            "eval",
            "--model",
            str(tiny / "model"),
            "--adapter",
            f"lora={tiny / 'adapter'}",
            "--include-base",
            "--data-dir",
            str(FIXTURES),
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--humaneval-samples",
            "2",
            "--sandbox-timeout",
            "5",
            "--loss-data",
            str(tiny / "heldout.jsonl"),
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def predictions(out: Path, label: str, bench: str) -> list[dict]:
    return [
        json.loads(line) for line in (out / "predictions" / label / f"{bench}.jsonl").read_text().splitlines()
    ]


def test_writes_results_table_and_every_prediction(run):
    out, results = run
    assert [r["label"] for r in results["runs"]] == ["base", "lora"]
    assert results["runs"][1]["adapter"]["peft_type"] == "LORA"
    expected_n = {"mmlu": 4, "bbh": 4, "gsm8k": 2, "tydiqa": 4, "humaneval": 2}
    for r in results["runs"]:
        assert set(r["scores"]) == {*BENCHMARKS, "loss"}
        assert {b: r["scores"][b]["n"] for b in BENCHMARKS} == expected_n
        assert {b: len(predictions(out, r["label"], b)) for b in BENCHMARKS} == expected_n
        assert r["average"] is not None and set(r["timings"]) == {*BENCHMARKS, "loss"}
    assert results["complete"] is True
    assert results["seeds"] == {"python": 1234, "numpy": 1234, "torch": 1234}
    assert results["config"]["chat_format"] == "tulu" and results["config"]["limit"] == 2
    assert results["sandbox"]["mode"] == "namespaces" and results["sandbox"]["processes"] == "seccomp"
    assert results["environment"]["lm_eval"] == "0.4.13"
    timing = results["runs"][0]["timings"]["mmlu"]
    assert timing["full_size"] == 6 and timing["estimated_full_s"] == pytest.approx(
        timing["seconds_per_example"] * 6
    )
    table = (out / "results.md").read_text()
    assert "| Run | MMLU EM (0-shot) | BBH EM (3-shot, direct) |" in table and "| lora |" in table
    assert "## TyDi QA by language (F1 / EM)" in table and "Estimated full time" in table
    assert not list(out.rglob("*.tmp"))


def _continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer.encode(context, add_special_tokens=False)
    cont = tokenizer.encode(continuation, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    return sum(logits[len(ctx) - 1 + i, token].item() for i, token in enumerate(cont))


def test_mmlu_letter_is_the_most_probable_continuation(run):
    out, results = run
    model, tokenizer = make_tiny_model()  # same seed: the saved base model
    rows = predictions(out, "base", "mmlu")
    for row in rows:
        expected = {
            letter: _continuation_logprob(model, tokenizer, row["prompt"], " " + letter) for letter in "ABCD"
        }
        assert row["logprobs"] == pytest.approx(expected, abs=1e-4)
        assert row["prediction"] == max(expected, key=expected.get)
        assert row["correct"] == (row["prediction"] == row["answer"])
    accuracy = 100 * sum(r["correct"] for r in rows) / len(rows)
    assert results["runs"][0]["scores"]["mmlu"]["exact_match"] == pytest.approx(accuracy)


def test_generative_scores_recompute_from_the_predictions(run):
    out, results = run
    for r in results["runs"]:
        scores, label = r["scores"], r["label"]
        gsm = predictions(out, label, "gsm8k")
        assert scores["gsm8k"]["exact_match"] == pytest.approx(
            100
            * sum(metrics.numbers_equal(metrics.last_number(p["response"]), p["reference"]) for p in gsm)
            / len(gsm)
        )
        for p in predictions(out, label, "bbh"):
            assert p["correct"] == bool(
                metrics.bbh_exact_match(metrics.bbh_extract_answer(p["response"]), p["target"])
            )
        per_language = {}
        for p in predictions(out, label, "tydiqa"):
            assert p["f1"] == pytest.approx(metrics.squad_f1(p["response"].strip(), p["answers"]))
            per_language.setdefault(p["language"], []).append(p["f1"])
        macro_f1 = sum(100 * sum(v) / len(v) for v in per_language.values()) / len(per_language)
        assert scores["tydiqa"]["f1"] == pytest.approx(macro_f1)
        for p in predictions(out, label, "humaneval"):
            assert len(p["completions"]) == 2
            assert {c["status"] for c in p["completions"]} <= {"passed", "failed", "timeout"}
            passed = sum(c["status"] == "passed" for c in p["completions"])
            assert p["pass@1"] == pytest.approx(metrics.pass_at_k(2, passed, 1))
    assert results["runs"][0]["scores"] != results["runs"][1]["scores"]  # the adapter changes the model


def test_heldout_loss_is_the_mean_nll_of_assistant_tokens(tiny, capsys):
    model, tokenizer = make_tiny_model()
    (tiny / "one.jsonl").write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}
        )
        + "\n"
    )
    result = heldout_loss(model, tokenizer, str(tiny / "one.jsonl"))
    # Tulu format: only "hi" + EOS are trained: 3 byte-level tokens
    context, answer = "<|user|>\nSay hi\n<|assistant|>\n", "hi<|endoftext|>"
    expected = -_continuation_logprob(model, tokenizer, context, answer) / 3
    assert result["tokens"] == 3 and result["examples"] == 1
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # with a progress bar on stderr: examples done of all, rate and ETA
    err = capsys.readouterr().err
    assert (
        f"[prolora eval] loss on {tiny / 'one.jsonl'}: 100%" in err and "1/1 [" in err and "example/s]" in err
    )


def test_prolora_adapter_row_and_base_row(tiny, tmp_path):
    """A PRoLoRA adapter loads through PEFT, is active in its row and fully off in the base row."""
    from prolora import PRoLoRAConfig, get_prolora_model

    model, tokenizer = make_tiny_model()
    config = PRoLoRAConfig(
        r=4, unshared_r=1, sharing_rate_a=2, sharing_rate_b=2, target_modules=["q_proj", "v_proj"]
    )
    adapted = get_prolora_model(model, config)
    torch.manual_seed(2)
    for _name, param in adapted.named_parameters():
        if param.requires_grad:  # B starts at zero; make the adapter change the model
            param.data.normal_(0, 0.5)
    adapted.save_pretrained(tmp_path / "prolora")
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny / "model"),
                "--adapter",
                f"pro={tmp_path / 'prolora'}",
                "--include-base",
                "--tasks",
                "mmlu",
                "--data-dir",
                str(FIXTURES),
                "--limit",
                "1",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["base", "pro"]
    assert results["runs"][1]["adapter"]["peft_type"] == "PROLORA"
    plain, _ = make_tiny_model()
    for row in predictions(out, "base", "mmlu"):  # the base row is the model without any adapter
        assert row["logprobs"]["A"] == pytest.approx(
            _continuation_logprob(plain, tokenizer, row["prompt"], " A"), abs=1e-4
        )
    base, pro = predictions(out, "base", "mmlu")[0], predictions(out, "pro", "mmlu")[0]
    assert base["logprobs"] != pytest.approx(pro["logprobs"], abs=1e-3)


def test_loss_alone(tiny, tmp_path):
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny / "model"),
                "--tasks",
                "none",
                "--loss-data",
                str(tiny / "heldout.jsonl"),
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["benchmarks"] == [] and set(results["runs"][0]["scores"]) == {"loss"}
    assert results["runs"][0]["scores"]["loss"]["examples"] == 2 and results["runs"][0]["average"] is None


def test_a_run_that_stops_early_keeps_the_finished_benchmarks(tiny, tmp_path, monkeypatch):
    from prolora.eval.benchmarks import humaneval

    def broken(samples, settings):
        raise RuntimeError("stopped")

    monkeypatch.setattr(humaneval, "score", broken)
    with pytest.raises(RuntimeError, match="stopped"):
        main(
            [
                "eval",
                "--model",
                str(tiny / "model"),
                "--tasks",
                "gsm8k,humaneval",
                "--data-dir",
                str(FIXTURES),
                "--limit",
                "1",
                "--max-new-tokens",
                "4",
                "--humaneval-samples",
                "1",
                "--output-dir",
                str(tmp_path),
            ]
        )
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["complete"] is False and set(partial["runs"][0]["scores"]) == {"gsm8k"}
    assert len(predictions(tmp_path, "base", "gsm8k")) == 1
    assert "Incomplete" in (tmp_path / "results.md").read_text()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert (
        main(["eval", "--tasks", "gsm8k", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "GSM8K test file not found" in err and "--gsm8k PATH" in err
    assert main(["eval", "--tasks", "mmlu,squad", "--output-dir", str(tmp_path)]) == 2
    assert "unknown benchmark(s) ['squad']" in capsys.readouterr().err
    assert main(["eval", "--tasks", "none", "--output-dir", str(tmp_path)]) == 2
    assert "add --loss-data" in capsys.readouterr().err
