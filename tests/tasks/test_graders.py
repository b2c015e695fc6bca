"""Answer extraction and the four graders against hand-labelled responses, including answers that are
right in another form (``0.5`` vs ``1/2``, ``\\frac{1}{2}``, ``#### 42``, ``\\boxed{42}``); failures
(raised, timed out) score 0 and are counted; ``math`` keeps working off the main thread and in a Ray actor."""

from __future__ import annotations

import pickle
import threading

import pytest

from selfplay.tasks.answers import after_marker, answer_tag, boxed, extract, last_number
from selfplay.tasks.graders import build_grader, parse_number

GSM8K_REF = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
             "altogether in April and May.\n#### 72")


def test_extraction_each_way():
    assert boxed(r"so $\boxed{\frac{1}{\sqrt{2}}}$ and more") == r"\frac{1}{\sqrt{2}}"  # nested braces
    assert boxed(r"\boxed{1} then \boxed{2}") == "2" and boxed(r"\boxed{1") is None and boxed("42") is None
    assert answer_tag("<think>7?</think><answer> 8 </answer>") == "8" and answer_tag("8") is None
    assert after_marker(GSM8K_REF) == "72"
    assert after_marker("I think THE ANSWER IS: 5.\nbye") == "5"  # case-insensitive, colon and full stop dropped
    assert after_marker("The answer is") is None  # a marker with nothing after it is no answer
    assert last_number("1,234,567 apples and 3/4 of a pie") == "3/4"
    assert last_number(r"half is \frac{1}{2}") == r"\frac{1}{2}"
    assert last_number("no digits") is None
    assert extract(GSM8K_REF) == "72"  # auto: the marker
    assert extract(r"<answer>\boxed{3}</answer>") == r"\boxed{3}"  # auto: tags first
    assert extract("  42 ") == "42"  # auto: a bare answer is its own answer
    assert extract("I think 42", "boxed") is None
    with pytest.raises(ValueError, match="unknown answer extraction 'first'"):
        extract("x", "first")


def test_numbers_people_write():
    cases = {"0.5": 0.5, "1/2": 0.5, r"\frac{1}{2}": 0.5, r"-\dfrac{3}{4}": -0.75, "-.5": -0.5, "1,234": 1234.0,
             "$1,250 dollars": 1250.0, "1e-3": 0.001, "12 and then 13": 13.0, "1,2": 2.0, "x": None, "1/0": None}
    for text, value in cases.items():
        assert parse_number(text) == value, text


# (response, reference, right?) labelled by hand
NUMERIC = [
    ("0.5", "1/2", True), (r"\frac{1}{2}", "0.5", True), ("The answer is 1,234.", "#### 1234", True),
    ("So she has $1,250 left.", "1250", True), ("#### 72", GSM8K_REF, True), (r"\boxed{42}", "#### 42", True),
    ("24 clips in May, so 96 in all", GSM8K_REF, False), ("12.0000001", "12", True), ("12.01", "12", False),
    ("", "3", False), ("no idea", "3", False), ("<answer>-7</answer>", "-7", True),
]
MATH = [
    (r"\boxed{\frac{1}{2}}", "The answer is $\\boxed{0.5}$", True), ("1/2", "#### 0.5", True),
    (r"$\frac{2}{4}$", r"\boxed{\frac{1}{2}}", True), ("#### 42", "#### 42", True), (r"\boxed{42}", "#### 42", True),
    ("So the total is 72.\n#### 72", GSM8K_REF, True), ("#### 71", GSM8K_REF, False),
    (r"\boxed{\sqrt{2}/2}", r"\boxed{\frac{1}{\sqrt{2}}}", True), ("x", r"\boxed{\frac{1}{2}}", False),
]
EXACT = [("The answer is Paris.", "Paris", True), ("<answer> paris </answer>", "#### PARIS", True),
         ("Answer: Lyon", "Paris", False), ("Paris is nice", "Paris", False)]


@pytest.mark.parametrize(("kind", "cases"), [("numeric", NUMERIC), ("math", MATH), ("exact", EXACT)])
def test_graders_on_hand_labelled_responses(kind, cases):
    grader = build_grader(kind)
    got = [grader.score(response, reference) for response, reference, _ in cases]
    assert got == [1.0 if right else 0.0 for _, _, right in cases]
    assert grader.counts.as_dict() == {"grader_errors": 0, "grader_timeouts": 0}


def test_regex_extracts_then_compares_exactly():
    grader = build_grader("regex", pattern=r"Final: (?P<answer>\w+)")
    assert grader.score("I guess... Final: Paris", "Final: paris") == 1.0
    assert grader.score("Final: Lyon. Final: Paris", "Final: Paris") == 1.0  # the last match
    assert grader.score("Paris", "Final: Paris") == 0.0  # no match in the response: no answer
    with pytest.raises(ValueError, match="does not match the reference 'Paris'"):
        grader.check_reference("Paris")
    bare = build_grader("regex", pattern=r"Final: (\w+)", reference_extract="whole")
    assert bare.score("Final: Paris", "Paris") == 1.0
    with pytest.raises(ValueError, match="needs pattern"):
        build_grader("regex")


def test_references_a_grader_cannot_read_are_refused():
    with pytest.raises(ValueError, match="holds no number"):
        build_grader("numeric").check_reference("#### about a dozen")
    with pytest.raises(ValueError, match="has no answer to extract \\('boxed'\\)"):
        build_grader("numeric", extract="boxed").check_reference("42")
    with pytest.raises(ValueError, match="math-verify parses nothing"):
        build_grader("math").check_reference("#### I am not sure")


def test_a_grader_that_raises_scores_0_and_counts():
    grader = build_grader("numeric")

    def boom(answer, gold):
        raise ZeroDivisionError("bad answer")

    grader._compare = boom
    assert grader.score("3", "3") == 0.0
    assert grader.score("4", "3") == 0.0
    assert grader.counts.errors == 2 and grader.counts.last_error == "ZeroDivisionError: bad answer"


def test_math_times_out_per_answer_scores_0_counts_and_recovers():
    grader = build_grader("math", timeout_s=0.5)
    assert grader.score("3", "#### 3") == 1.0  # starts the child: its start-up is not an answer's time
    assert grader.score("$9^{9^{9^{9^{9}}}}$", "#### 3") == 0.0  # sympy would run for ever
    assert grader.counts.timeouts == 1 and "took over 0.5 s" in grader.counts.last_error
    assert grader.score(r"\boxed{3}", "#### 3") == 1.0  # a fresh child took over
    grader.close()


def _grade_in_thread(grader, response, reference):
    out = []
    worker = threading.Thread(target=lambda: out.append(grader.score(response, reference)))
    worker.start()
    worker.join(60)
    return out[0]


def test_math_grades_off_the_main_thread_where_math_verify_alone_scores_0():
    from math_verify import parse, verify

    def library_defaults():  # math-verify's own signal.alarm timeouts, as verl and trl called it
        try:
            return verify(parse("$\\frac{1}{2}$"), parse("0.5"))
        except ValueError as exc:  # 0.9 raises "doesn't support threaded environment"; older ones gave 0
            return f"raised: {exc}"

    alone = []
    worker = threading.Thread(target=lambda: alone.append(library_defaults()))
    worker.start()
    worker.join(60)
    assert alone[0] is False or "threaded environment" in alone[0]  # never a 1: the zero this grader avoids
    grader = pickle.loads(pickle.dumps(build_grader("math")))  # travels without its child process
    assert _grade_in_thread(grader, "0.5", r"\boxed{\frac{1}{2}}") == 1.0
    grader.close()


def test_math_grader_inside_a_ray_actor(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0, max_concurrency=2)  # a threaded actor: methods run off the main thread
    class Grading:
        def score(self, grader, cases):
            import threading as th

            assert th.current_thread() is not th.main_thread()
            return [grader.score(response, reference) for response, reference in cases]

    cases = [("1/2", "#### 0.5"), (r"\boxed{42}", "#### 42"), ("#### 41", "#### 42"), ("$9^{9^{9^{9^{9}}}}$", "#### 3")]
    actor = Grading.remote()
    scores = ray.get(actor.score.remote(build_grader("math", timeout_s=1.0), cases), timeout=300)
    assert scores == [1.0, 1.0, 0.0, 0.0]
    ray.kill(actor)


def test_vote_keys_put_answers_the_grader_equates_in_one_vote():
    """maj@k votes on ``Task.extract_answer``, which for a graded dataset is the grader's ``vote_key``: answers
    the grader counts as equal must vote together, or a majority of right answers in several forms loses."""
    from selfplay.loop.evaluation import answer_of, majority
    from selfplay.tasks.graders import build_grader

    numeric = build_grader("numeric")
    keys = [numeric.vote_key(r) for r in ("so 1/2", "The answer is 0.5", "#### .5", "it is 3", "no idea")]
    assert keys[:3] == ["0.5", "0.5", "0.5"] and keys[3] == "3" and keys[4] is None
    assert majority(keys) == 0
    exact = build_grader("exact")
    assert exact.vote_key("Answer: Paris.") == exact.vote_key("answer:  paris") == "paris"

    class Graded:  # what DatasetTask.extract_answer does with a grader
        def extract_answer(self, response: str) -> str | None:
            return numeric.vote_key(response)

    assert answer_of(Graded(), "x = \\frac{1}{2}") == "0.5"
