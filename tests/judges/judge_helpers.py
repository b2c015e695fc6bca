"""A real judge model for the LLM-as-a-judge tests: the nano policy trained in-process to answer every
judge prompt with ``Verdict: B``, so its verdicts parse and the expected scores are known by hand."""

from __future__ import annotations

from typing import Any


def train_to_answer_b(model: Any, tok: Any, judge_prompts: list[str], steps: int) -> None:
    """``steps`` Adam steps (lr 3e-3, seed 0) of cross-entropy on ``Verdict: B`` + eos after each judge
    prompt (as a one-turn chat), cycling through the prompts; the model is left in eval mode."""
    import torch

    from selfplay.generate.types import encode_prompts

    answer = tok("Verdict: B", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seqs = [x + answer for x in encode_prompts(tok, [[{"role": "user", "content": t}] for t in judge_prompts])]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids = torch.tensor([seqs[step % len(seqs)]])
        logits = model(input_ids=ids).logits[0, -len(answer) - 1:-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, -len(answer):])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
