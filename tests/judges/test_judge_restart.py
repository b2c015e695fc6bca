"""A judge actor that dies mid-judging is restarted by Ray and only its unfinished prompts are judged again.

Real Ray actor (``actors.judge.spawn_judge``) hosting a plug-in judge whose process dies once, on its
second call (the injected fault).
"""

from __future__ import annotations

from selfplay.config.schema import PythonJudgeConfig
from selfplay.judges.base import PromptGroup, run_judge


def test_dead_judge_actor_is_restarted_and_only_the_unfinished_chunk_is_judged_again(ray_local, tmp_path):
    from actors.judge import CHUNK, spawn_judge

    log = tmp_path / "calls.log"
    cfg = PythonJudgeConfig(type="python", target="tests.judges.dying_judge:DyingJudge",
                            kwargs={"log": str(log), "die_on": 2})
    judge = spawn_judge(cfg, num_cpus=0, max_restarts=2)
    groups = [PromptGroup(f"p{i}", f"prompt {i}", ["a", "bb", "ccc"]) for i in range(2 * CHUNK + 5)]
    scores = run_judge(judge, groups)
    assert scores == [[1.0, 2.0, 3.0]] * len(groups)
    calls = [line.split(",") for line in log.read_text().splitlines()]
    # chunk 0 once; chunk 1 twice (its first attempt died); chunk 2 once: nothing else was judged again
    assert [c[0] for c in calls] == ["p0", f"p{CHUNK}", f"p{CHUNK}", f"p{2 * CHUNK}"]
    assert judge.restarts == 1 and judge.stats["judge_restarts"] == 1
    judge.close()
