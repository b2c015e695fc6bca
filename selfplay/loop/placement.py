"""The placement plan of a run, and the check that refuses, before any actor starts, a recipe that cannot
fit the connected Ray cluster.

A run holds up to four groups of actors at once, for its whole length: the generator pool (one
placement group, a bundle per replica), the model judge (one actor: ``reward_model``/``pairwise``; the
``llm_judge`` is a one-replica generator pool of its own), and the learner group (one placement group,
a bundle per rank). ``plan_groups`` lists them with their bundles and strategy, in the order a run
creates them (learners first when there is a warm start, else generators, judge, learners).

``fit`` places them on the cluster's nodes the way Ray's strategies do (``strict_pack``: one node;
``strict_spread``: distinct nodes; ``pack``: one node when one has room, else fewest nodes; ``spread``:
round robin), each group on what the earlier ones left. It is a conservative model of Ray's scheduler,
not a copy of it: when it says a plan fits, the real reservations were made in the same order in the
multi-node test (``tests/cluster/test_placement_plan.py``). When a plan cannot fit, the error names the
group, its bundles and, per resource, what the run needs against what the cluster has, so a recipe
that needs 17 GPUs on 16 is refused in a second instead of waiting for a placement group that never
comes. ``check_cluster`` runs in ``Runtime.ensure_ray`` (the run's preflight: right after joining or
starting Ray, before the first actor) and in ``selfplay validate --cluster``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfplay.config import ConfigError, RunConfig
from selfplay.config.cores import count

Bundle = dict[str, float]
EPS = 1e-9


@dataclass(frozen=True)
class Group:
    """Actors reserved together: ``bundles`` (one per actor) placed with ``strategy``."""

    name: str
    bundles: tuple[Bundle, ...]
    strategy: str = "PACK"


@dataclass
class Fit:
    """Where each group's bundles went (node indexes), or why a group did not fit."""

    placed: dict[str, list[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _bundle(cpus: float, gpus: float, custom: dict[str, float] | None = None) -> Bundle:
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {}), **dict(custom or {})}


def plan_groups(cfg: RunConfig) -> list[Group]:
    """The actor groups ``cfg`` holds at once, in creation order."""
    from selfplay.loop.factory import judge_resources

    res = cfg.resources
    strategy = res.placement.upper()
    generator = _bundle(res.generator_cpus, res.generator_gpus * cfg.generation.tensor_parallel_size,
                        res.generator_resources)
    groups: list[Group] = []
    if cfg.task.type != "pairs" or cfg.evaluation.num_prompts > 0:
        groups.append(Group("generators", (generator,) * count(cfg.generation.replicas), strategy))
    if cfg.judge is not None and cfg.judge.type in ("reward_model", "pairwise"):
        cpus, gpus = judge_resources(cfg)
        groups.append(Group(f"judge ({cfg.judge.type})", (_bundle(cpus, gpus),), "PACK"))
    elif cfg.judge is not None and cfg.judge.type == "llm_judge":
        groups.append(Group("judge (llm_judge generator)", (generator,), strategy))
    learners = Group("learners", (_bundle(res.learner_cpus, res.learner_gpus, res.learner_resources),) * res.learners,
                     strategy)
    return [learners, *groups] if cfg.policy.warmstart is not None else [*groups, learners]


def _fits(free: Bundle, need: Bundle) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in need.items())


def _take(free: Bundle, need: Bundle) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def _total(bundles: tuple[Bundle, ...] | list[Bundle]) -> Bundle:
    out: Bundle = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _place(group: Group, free: list[Bundle]) -> list[int] | None:
    """Node index per bundle, taking from ``free``; ``None`` (``free`` untouched) if it does not fit."""
    trial = [dict(f) for f in free]
    whole = _total(group.bundles)
    if group.strategy in ("PACK", "STRICT_PACK"):
        # one node when one has room (the fullest such node, leaving big holes for later groups)
        hosts = [i for i, f in enumerate(trial) if _fits(f, whole)]
        if hosts:
            best = min(hosts, key=lambda i: sum(trial[i].values()))
            _take(free[best], whole)
            return [best] * len(group.bundles)
        if group.strategy == "STRICT_PACK":
            return None
    used: list[int] = []
    for b in group.bundles:
        candidates = [i for i, f in enumerate(trial) if _fits(f, b)]
        if group.strategy == "STRICT_SPREAD":
            candidates = [i for i in candidates if i not in used]
        if not candidates:
            return None
        if group.strategy == "PACK":  # stay on the nodes already used, then the roomiest
            key = lambda i: (i not in used, -trial[i].get("GPU", 0.0), -trial[i].get("CPU", 0.0))
        else:  # SPREAD / STRICT_SPREAD: the node holding fewest of this group's bundles
            key = lambda i: (used.count(i), -trial[i].get("GPU", 0.0), -trial[i].get("CPU", 0.0))
        node = min(candidates, key=key)
        _take(trial[node], b)
        used.append(node)
    free[:] = trial
    return used


def _fmt(x: float) -> str:
    return f"{x:g}"


def fit(groups: list[Group], nodes: list[Bundle]) -> Fit:
    """Place ``groups`` in order on ``nodes`` (each node's resources); the first failure is explained."""
    free = [dict(n) for n in nodes]
    result = Fit()
    need_all = _total([b for g in groups for b in g.bundles])
    have_all = _total(nodes)
    short = {k: (v, have_all.get(k, 0.0)) for k, v in need_all.items() if v > have_all.get(k, 0.0) + EPS}
    if short:
        plan = "; ".join(f"{g.name}: {len(g.bundles)} x {_show(g.bundles[0])}" for g in groups if g.bundles)
        for k, (need, have) in sorted(short.items()):
            result.problems.append(f"{k}: the run needs {_fmt(need)} at once, the cluster has {_fmt(have)} "
                                   f"(missing {_fmt(need - have)}); plan: {plan}")
        return result
    for g in groups:
        nodes_used = _place(g, free)
        if nodes_used is None:
            left = ", ".join(f"node {i}: {_show(f)}" for i, f in enumerate(free))
            result.problems.append(f"{g.name}: {len(g.bundles)} x {_show(g.bundles[0])} ({g.strategy.lower()}) "
                                   f"does not fit what the earlier groups leave ({left})")
            return result
        result.placed[g.name] = nodes_used
    return result


def _show(b: Bundle) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in sorted(b.items()) if v) + "}"


def cluster_nodes() -> list[Bundle]:
    """Total resources of every alive node of the connected Ray cluster (memory-like keys left out)."""
    import ray

    skip = ("memory", "object_store_memory")
    out = []
    for node in ray.nodes():
        if node.get("Alive"):
            out.append({k: float(v) for k, v in node.get("Resources", {}).items()
                        if k not in skip and not k.startswith("node:")})
    return out


def check_cluster(cfg: RunConfig, nodes: list[Bundle] | None = None, source: str = "<recipe>") -> Fit:
    """Refuse (``ConfigError``) a recipe whose actors cannot all be placed on ``nodes`` (default: the
    connected cluster); returns the fit otherwise."""
    nodes = cluster_nodes() if nodes is None else nodes
    result = fit(plan_groups(cfg), nodes)
    if not result.ok:
        raise ConfigError(source, [f"resources (cluster of {len(nodes)} node(s)): {p}" for p in result.problems])
    return result


def describe(result: Fit, groups: list[Group]) -> str:
    """One line per group: where its bundles went."""
    lines = []
    for g in groups:
        where = result.placed.get(g.name, [])
        counts = {n: where.count(n) for n in sorted(set(where))}
        lines.append(f"{g.name}: {len(g.bundles)} x {_show(g.bundles[0])} -> "
                     + ", ".join(f"node {n}: {c}" for n, c in counts.items()))
    return "\n".join(lines)

