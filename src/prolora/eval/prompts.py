"""Prompt formats: one benchmark prompt rendered as Tulu chat, the tokenizer's chat template, or plain text.

open-instruct (the evaluation the PRoLoRA paper follows) builds every prompt as one user turn and, in
chat mode, appends an answer prefix after the assistant tag, e.g.
``<|user|>\\n{question...}\\n<|assistant|>\\nAnswer:``. Without chat it uses a plain few-shot prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_FORMATS = ("tulu", "template", "none")
DEFAULT_CHAT_FORMAT = "tulu"


@dataclass(frozen=True)
class Prompt:
    """A benchmark prompt in both shapes open-instruct uses.

    Attributes:
        user: the user turn (chat formats).
        assistant_prefix: text the assistant turn starts with (chat formats), e.g. ``"Answer:"``.
        plain: the complete prompt for ``--chat-format none``.
    """

    user: str
    assistant_prefix: str
    plain: str


def tulu_chat(user: str) -> str:
    """open-instruct's ``create_prompt_with_tulu_chat_format`` for one user turn, without BOS."""
    return "<|user|>\n" + user + "\n<|assistant|>\n"


def render(prompt: Prompt, chat_format: str, tokenizer=None) -> str:
    """The text fed to the model for ``prompt`` in ``chat_format`` (one of :data:`CHAT_FORMATS`).

    ``template`` uses ``tokenizer.apply_chat_template`` with a generation prompt. As in open-instruct,
    the assistant prefix follows the chat wrapper directly when it ends in whitespace, else after a space.
    """
    if chat_format == "none":
        return prompt.plain
    if chat_format == "tulu":
        wrapped = tulu_chat(prompt.user)
    elif chat_format == "template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "--chat-format template needs a tokenizer with a chat template; this one has "
                "none. Use --chat-format tulu or none."
            )
        wrapped = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.user}], tokenize=False, add_generation_prompt=True
        )
    else:
        raise ValueError(f"unknown chat format {chat_format!r}; choose one of {', '.join(CHAT_FORMATS)}")
    if not prompt.assistant_prefix:
        return wrapped
    joiner = "" if wrapped[-1:] in ("\n", " ") else " "
    return wrapped + joiner + prompt.assistant_prefix
