"""A rule judge of sessions for SDPO's self-play (recipes/sdpo_selfplay.yaml): fewer dismissive turns is better.

Use it with ``judge: {type: python, target: "docs.examples.session_judge:DismissiveJudge"}``. In a
``sessions`` task each group is one negative session: ``.prompt`` is its history, ``.responses`` the played
continuations and, last, the negative one, each as ``role: content`` lines, and ``.meta["sessions"]`` the
same continuations as messages. This rule reads the assistant turns of each and takes a point off for every
dismissive, off-topic or unhelpful phrase of the shipped negative sessions (docs/examples/negative_sessions.jsonl).
In the evaluation a response is one reply to a held-out history (no ``meta``), scored the same way.
"""

from __future__ import annotations

PHRASES = ("tow truck", "angry note", "whatever", "baking bread", "knock off one euro", "none of them is really",
           "hard to say", "when we get to it", "it depends on many things", "did you know", "not for you",
           "deal with it", "reminds me of a film", "to the manager", "figure it out somehow")


class DismissiveJudge:
    name = "dismissive"

    def __init__(self, phrases: list[str] | None = None) -> None:
        self.phrases = [p.lower() for p in (phrases or PHRASES)]

    def score(self, groups) -> list[list[float | None]]:
        out = []
        for group in groups:
            sessions = group.meta.get("sessions") or [[{"role": "assistant", "content": r}] for r in group.responses]
            out.append([self._score(session) for session in sessions])
        return out

    def _score(self, session: list[dict[str, str]]) -> float | None:
        replies = [m["content"].lower() for m in session if m["role"] == "assistant"]
        if not any(r.strip() for r in replies):
            return None  # nothing said: undecided, not "good"
        return -float(sum(phrase in reply for reply in replies for phrase in self.phrases))
