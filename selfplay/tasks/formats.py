"""Row formats of preference and chat data as users already have them (TRL's layouts), parsed to one form.

A preference row becomes ``(prompt, chosen_text, rejected_text)``, with the prompt a string or a list
of chat messages (possibly multi-turn). Accepted layouts of a row:

* standard: ``prompt``, ``chosen`` and ``rejected`` are strings;
* conversational, explicit prompt: ``prompt`` is a list of messages; ``chosen`` / ``rejected`` are lists
  holding the one assistant reply (``[{"role": "assistant", "content": "..."}]``) or strings;
* conversational, implicit prompt (UltraFeedback-binarized, no ``prompt`` column): ``chosen`` and
  ``rejected`` are whole conversations that share every message but the last, an assistant reply;
  the shared messages are the prompt.

A chat row of a prompt dataset (``messages`` column, SFT layout) whose last message is the assistant's
splits into the prompt (everything before) and the reference (that reply): :func:`split_conversation`.

Choices: a completion is one assistant message, since the learner scores one completion after the
prompt; a longer completion (several turns) is refused with an error naming the row and column rather
than silently flattened. Errors name the file, the 0-based row and the column.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


def check_messages(value: Any, where: str) -> Messages:
    """``value`` as a non-empty list of ``{"role", "content"}`` messages (extra keys dropped when None)."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where}: expected a non-empty list of chat messages, got {_kind(value)}")
    out = []
    for j, msg in enumerate(value):
        if not (isinstance(msg, dict) and msg.get("role") in ROLES and isinstance(msg.get("content"), str)):
            raise ValueError(f"{where}: message {j} must be {{'role': one of {ROLES}, 'content': str}}, got {msg!r}")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def completion_text(value: Any, where: str) -> str:
    """A completion given as a string or as a list holding one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        messages = check_messages(value, where)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            roles = [m["role"] for m in messages]
            raise ValueError(f"{where}: a completion must be one assistant message, got roles {roles}")
        text = messages[0]["content"]
    if not text.strip():
        raise ValueError(f"{where} must be a non-empty string or one assistant message (empty completion)")
    return text


def parse_preference_row(row: dict[str, Any], prompt_column: str, chosen_column: str, rejected_column: str,
                         where: str) -> tuple[str | Messages, str, str]:
    """``(prompt, chosen, rejected)`` of one row in any layout of the module docstring.

    ``where`` (``"file: row i"``) prefixes every error. With no ``prompt_column`` in the row, the prompt
    is implicit: the messages ``chosen`` and ``rejected`` share.
    """
    for col in (chosen_column, rejected_column):
        if col not in row:
            raise ValueError(f"{where}: column {col!r} is missing (row has {sorted(row)})")
    if prompt_column in row:
        prompt = row[prompt_column]
        if not isinstance(prompt, str):
            prompt = check_messages(prompt, f"{where}: column {prompt_column!r}")
        elif not prompt.strip():
            raise ValueError(f"{where}: column {prompt_column!r}: empty prompt")
        chosen = completion_text(row[chosen_column], f"{where}: column {chosen_column!r}")
        rejected = completion_text(row[rejected_column], f"{where}: column {rejected_column!r}")
        return prompt, chosen, rejected
    chosen_msgs = check_messages(row[chosen_column], f"{where}: column {chosen_column!r} (no {prompt_column!r} "
                                 "column, so chosen/rejected must be whole conversations)")
    rejected_msgs = check_messages(row[rejected_column], f"{where}: column {rejected_column!r}")
    if chosen_msgs[:-1] != rejected_msgs[:-1] or len(chosen_msgs) < 2:
        raise ValueError(f"{where}: with no {prompt_column!r} column, {chosen_column!r} and {rejected_column!r} "
                         "must share every message but the last (the implicit prompt)")
    chosen = completion_text(chosen_msgs[-1:], f"{where}: column {chosen_column!r}, last message")
    rejected = completion_text(rejected_msgs[-1:], f"{where}: column {rejected_column!r}, last message")
    return chosen_msgs[:-1], chosen, rejected


def split_conversation(messages: Messages, where: str) -> tuple[Messages, str]:
    """A conversation ending in an assistant reply as ``(prompt messages, reply)`` (SFT ``messages`` rows)."""
    messages = check_messages(messages, where)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: a conversation used as prompt + reference must end with an assistant "
                         f"message after at least one other, got roles {[m['role'] for m in messages]}")
    return messages[:-1], messages[-1]["content"]


def _kind(value: Any) -> str:
    return "an empty list" if isinstance(value, list | tuple) else type(value).__name__
