"""Row formats of preference and chat data as users already have them (TRL's layouts), parsed to one form.

A preference row becomes ``(prompt, chosen, rejected)``, with the prompt a string or a list of chat
messages (possibly multi-turn) and each side the text of one assistant reply, or a multi-turn
continuation (a list of messages, see below). Accepted layouts of a row:

* standard: ``prompt``, ``chosen`` and ``rejected`` are strings;
* conversational, explicit prompt: ``prompt`` is a list of messages; ``chosen`` / ``rejected`` are lists
  of messages (one assistant reply, or several turns) or strings;
* conversational, implicit prompt (UltraFeedback-binarized, no ``prompt`` column): ``chosen`` and
  ``rejected`` are whole conversations; the messages they share before they first differ are the prompt.

Multi-turn continuations (SDPO's sessions, Kong et al. 2025): the two sides share a history and then
differ, first at an assistant turn (the erroneous turn of the negative session), and may go on with user
turns and more assistant turns each. Whatever the layout, the messages both sides share are moved into
the prompt, so a side starts at the first turn where they differ; a side that is then one assistant
message is returned as its text, as before, and a longer one as its messages. Refused, naming the row:
sessions that never differ (or differ only in length), a first difference that is not an assistant turn
on both sides, two turns of one role in a row, and a system message after the history.

A chat row of a prompt dataset (``messages`` column, SFT layout) whose last message is the assistant's
splits into the prompt (everything before) and the reference (that reply): :func:`split_conversation`.
Errors name the file, the 0-based row and the column.
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


Side = str | Messages
"""One side of a pair: the text of one assistant reply, or a multi-turn continuation (messages)."""


def parse_preference_row(row: dict[str, Any], prompt_column: str, chosen_column: str, rejected_column: str,
                         where: str) -> tuple[str | Messages, Side, Side]:
    """``(prompt, chosen, rejected)`` of one row in any layout of the module docstring.

    ``where`` (``"file: row i"``) prefixes every error. With no ``prompt_column`` in the row, the prompt
    is implicit: the messages ``chosen`` and ``rejected`` share. A side is text when it is one assistant
    message after the shared messages, else its messages (a multi-turn continuation).
    """
    for col in (chosen_column, rejected_column):
        if col not in row:
            raise ValueError(f"{where}: column {col!r} is missing (row has {sorted(row)})")
    c_where, r_where = f"{where}: column {chosen_column!r}", f"{where}: column {rejected_column!r}"
    if prompt_column in row:
        prompt = row[prompt_column]
        if not isinstance(prompt, str):
            prompt = check_messages(prompt, f"{where}: column {prompt_column!r}")
        elif not prompt.strip():
            raise ValueError(f"{where}: column {prompt_column!r}: empty prompt")
        chosen, rejected = row[chosen_column], row[rejected_column]
        if _one_reply(chosen) and _one_reply(rejected):  # the single-turn layouts, as they always were
            return prompt, completion_text(chosen, c_where), completion_text(rejected, r_where)
        chosen_msgs = [{"role": "assistant", "content": chosen}] if isinstance(chosen, str) else check_messages(
            chosen, c_where)
        rejected_msgs = [{"role": "assistant", "content": rejected}] if isinstance(rejected, str) else \
            check_messages(rejected, r_where)
        history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    else:
        chosen_msgs = check_messages(row[chosen_column], f"{c_where} (no {prompt_column!r} column, so "
                                     "chosen/rejected must be whole conversations)")
        rejected_msgs = check_messages(row[rejected_column], r_where)
        prompt = history = []
    shared = 0
    while shared < min(len(chosen_msgs), len(rejected_msgs)) and chosen_msgs[shared] == rejected_msgs[shared]:
        shared += 1
    if shared == len(chosen_msgs) or shared == len(rejected_msgs):
        what = "never differ" if len(chosen_msgs) == len(rejected_msgs) else (
            f"differ only in length ({len(chosen_msgs)} and {len(rejected_msgs)} messages)")
        raise ValueError(f"{where}: the {chosen_column!r} and {rejected_column!r} sessions {what}; a pair must "
                         "differ at an assistant turn")
    prompt_msgs = [*history, *chosen_msgs[:shared]]
    if not prompt_msgs:
        raise ValueError(f"{where}: with no {prompt_column!r} column, {chosen_column!r} and {rejected_column!r} "
                         "must share the messages before their first difference (the implicit prompt), but "
                         "they differ at message 0")
    roles = (chosen_msgs[shared]["role"], rejected_msgs[shared]["role"])
    if roles != ("assistant", "assistant"):
        raise ValueError(f"{where}: roles out of order: {chosen_column!r} and {rejected_column!r} first differ at "
                         f"message {shared}, which must be an assistant turn on both sides (got {roles[0]!r} and "
                         f"{roles[1]!r}); user turns before the first difference are shared history")
    sides = []
    for col, msgs in ((chosen_column, chosen_msgs), (rejected_column, rejected_msgs)):
        turns = msgs[shared:]
        if len(turns) == 1:
            sides.append(completion_text(turns, f"{where}: column {col!r}, message {shared}"))
            continue
        check_turn_order([*prompt_msgs[-1:], *turns], f"{where}: column {col!r}", shared - 1)
        sides.append(turns)
    if prompt_column in row and not shared and isinstance(prompt, str):
        return prompt, sides[0], sides[1]
    return prompt_msgs, sides[0], sides[1]


def assistant_turns(side: Side) -> int:
    """How many assistant turns a side holds (text: one)."""
    return 1 if isinstance(side, str) else sum(m["role"] == "assistant" for m in side)


def _one_reply(value: Any) -> bool:
    """A string, or anything but a list of several messages (refused later by ``completion_text``)."""
    return not (isinstance(value, list | tuple) and len(value) > 1)


def check_turn_order(messages: Messages, where: str, first: int) -> None:
    """A continuation (after the last history message, numbered ``first``) alternates user and assistant."""
    for j, (a, b) in enumerate(zip(messages, messages[1:]), start=first + 1):
        if b["role"] == "system":
            raise ValueError(f"{where}: roles out of order: message {j} is a system message inside the session")
        if a["role"] == b["role"]:
            before = f"messages {j - 1} and {j} are" if j > 0 else "the prompt's last message and message 0 are"
            raise ValueError(f"{where}: roles out of order: {before} both {a['role']!r} turns")
        if b["role"] == "assistant" and not b["content"].strip():
            raise ValueError(f"{where}: message {j} is an empty assistant turn")


def split_conversation(messages: Messages, where: str) -> tuple[Messages, str]:
    """A conversation ending in an assistant reply as ``(prompt messages, reply)`` (SFT ``messages`` rows)."""
    messages = check_messages(messages, where)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: a conversation used as prompt + reference must end with an assistant "
                         f"message after at least one other, got roles {[m['role'] for m in messages]}")
    return messages[:-1], messages[-1]["content"]


def _kind(value: Any) -> str:
    return "an empty list" if isinstance(value, list | tuple) else type(value).__name__
