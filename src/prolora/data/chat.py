"""Chat formatting, tokenization and loss masking of one conversation.

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}`` messages. It is
rendered to text together with the character spans the model is trained on, then tokenized once; a token
gets a label when it starts inside a trained span, and label ``-100`` (ignored by the loss) otherwise.

Formats (``chat_format``):

``"tulu"`` — the open-instruct (Tulu) format of the paper (Appendix A.1, after Wang et al., 2023a)::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...

  Contents are stripped, ``{eos}`` is the tokenizer's end-of-sequence token. Trained: each assistant
  content and its EOS; the newline after EOS only separates turns (generation stops at EOS) and is not
  trained. The tokenizer's own special tokens (e.g. a Llama BOS) are added as for plain text.

``"template"`` — the tokenizer's chat template. Trained: each assistant turn from the end of the
  generation prompt to the end of the turn as the template renders it (its end-of-turn token included),
  trailing whitespace excluded. The template must render each conversation as an extension of its
  prefixes (true of common templates); otherwise :class:`ValueError` suggests ``"tulu"``.
"""

from __future__ import annotations

IGNORE_INDEX = -100
CHAT_FORMATS = ("tulu", "template")
TULU_TAGS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}

Span = tuple[int, int]  # [start, end) character offsets in the rendered text


def render_tulu(
    messages: list[dict], eos_token: str, add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render ``messages`` in the Tulu format; returns ``(text, trained spans)``.

    ``add_generation_prompt`` appends ``<|assistant|>\\n`` so that a model continues with its reply.
    """
    text, spans = "", []
    for message in messages:
        text += TULU_TAGS[message["role"]]
        start = len(text)
        text += message["content"].strip()
        if message["role"] == "assistant":
            text += eos_token
            spans.append((start, len(text)))
        text += "\n"
    if add_generation_prompt:
        text += TULU_TAGS["assistant"]
    return text, spans


# the Tulu format as a Jinja chat template, for servers that render chats themselves (vLLM's --chat-template
# or a request's chat_template; docs/vllm.md): renders exactly as render_tulu (tests/test_vllm_plugin.py)
TULU_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim }}"
    "{%- if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif -%}"
)


def render_template(
    tokenizer, messages: list[dict], add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render ``messages`` with ``tokenizer``'s chat template; returns ``(text, trained spans)``.

    Raises:
        ValueError: the tokenizer has no chat template, or the template does not render prefixes of the
            conversation as prefixes of its text (so assistant turns cannot be located).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use chat_format='tulu'")

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    text = render(messages, add_generation_prompt)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise ValueError(
                "the chat template does not render a conversation as an extension of its "
                "prefixes, so assistant turns cannot be located; use chat_format='tulu'"
            )
        spans.append((len(prompt), len(turn.rstrip())))
    return text, spans


def base_chat_format(tokenizer) -> str:
    """The default chat format of a *base model* (no adapter) in ``prolora generate``, ``chat`` and ``serve``:
    ``"template"`` when the tokenizer has a chat template (an instruction-tuned model, such as the embedded
    SmolLM2-135M-Instruct, was tuned with it; vLLM and OpenAI-compatible servers use it too), else
    ``"tulu"``. An adapter keeps the format its training run recorded; ``prolora eval`` keeps its protocol."""
    return "template" if getattr(tokenizer, "chat_template", None) else "tulu"


def render(
    tokenizer, messages: list[dict], chat_format: str = "tulu", add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render ``messages`` in ``chat_format`` (one of :data:`CHAT_FORMATS`); returns ``(text, spans)``."""
    if chat_format == "tulu":
        return render_tulu(messages, tokenizer.eos_token, add_generation_prompt)
    if chat_format == "template":
        return render_template(tokenizer, messages, add_generation_prompt)
    raise ValueError(f"chat_format={chat_format!r} is not one of {CHAT_FORMATS}")


def encode(tokenizer, messages: list[dict], max_length: int, chat_format: str = "tulu") -> dict:
    """Tokenize a conversation for causal-LM training, keeping the first ``max_length`` tokens.

    Returns ``{"input_ids", "attention_mask", "labels", "truncated"}``: ``labels[i]`` is
    ``input_ids[i]`` for tokens of the trained spans (see the module docstring) and ``-100`` elsewhere;
    ``truncated`` says whether tokens were cut. Needs a fast tokenizer (character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; loss masking needs character "
            "offsets (load the tokenizer with use_fast=True)"
        )
    text, spans = render(tokenizer, messages, chat_format)
    enc = tokenizer(text, add_special_tokens=chat_format == "tulu", return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    labels = [
        tok if end > start and any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for tok, (start, end) in zip(ids, offsets, strict=False)
    ]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "truncated": len(enc["input_ids"]) > max_length,
    }
