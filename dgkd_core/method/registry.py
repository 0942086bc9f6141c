"""The one registry of distillation methods: name, label, colour, and who guides a run.

A method's guide rule works on lineages (tuples of model names, teacher first, the trained model
last), so that this module needs nothing else from dgkd_core: `paths` turns (method, lineage)
pairs into runs, and the plan, the reports, the plots and the schema check all read this table.

    NoKD    the model alone                        lineage (model,)
    KD      the teacher                            lineage (teacher, model)
    TAKD    the previous model of the chain        lineage (teacher, *tas, model)
    DGKD    the teacher and every larger TA        lineage (teacher, *tas, model)
    sDGKD   DGKD's guides, each dropped at random  lineage (teacher, *tas, model)

A TAKD or DGKD model whose only guide is the teacher is, by definition, the KD run: the first TA
of TAKD and of DGKD is one job, `kd/<teacher>-<ta1>` (`canonical_method`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Lineage = tuple[str, ...]
GuideSpec = tuple[str, Lineage]  # (method, lineage) of a guide run, before canonicalisation


def _no_guides(lineage: Lineage) -> list[GuideSpec]:
    return []


def _teacher(lineage: Lineage) -> list[GuideSpec]:
    return [("nokd", lineage[:1])]


def _previous_in_chain(lineage: Lineage) -> list[GuideSpec]:
    return [("takd", lineage[:-1])]


def _teacher_and_every_larger_ta(lineage: Lineage) -> list[GuideSpec]:
    # Each TA was itself trained by DGKD from everything above it (the first one is the KD run).
    return _teacher(lineage) + [("dgkd", lineage[: i + 1]) for i in range(1, len(lineage) - 1)]


def _alone(teacher: str, tas: Lineage, student: str) -> Lineage:
    return (student,)


def _from_teacher(teacher: str, tas: Lineage, student: str) -> Lineage:
    return (teacher, student)


def _along_chain(teacher: str, tas: Lineage, student: str) -> Lineage:
    return (teacher, *tas, student)


@dataclass(frozen=True)
class Method:
    """One method of Table 1.

    guide_rule(lineage) -> [(method, lineage)] of the runs that guide a run, teacher first, then
    TAs from largest to smallest. student_lineage(teacher, tas, student) -> the lineage of the run
    that trains `student` by this method along a chain."""

    name: str
    label: str
    colour: str  # matplotlib colour of its bars and curves
    guide_rule: Callable[[Lineage], list[GuideSpec]]
    student_lineage: Callable[[str, Lineage, str], Lineage]
    needs_tas: bool  # a chain without TAs cannot run it
    kd_when_teacher_only: bool  # its model guided by the teacher alone is the shared KD run
    stochastic: bool = False  # carries a keep probability (loss.keep_prob) in its run
    min_guides: int = 0  # how many guide checkpoints a run of it takes, at least
    max_guides: int | None = 0  # ... and at most (None: no limit)


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("nokd", "NoKD", "#7f7f7f", _no_guides, _alone, False, False),
    Method("kd", "KD", "#1f77b4", _teacher, _from_teacher, False, False,
           min_guides=1, max_guides=1),
    Method("takd", "TAKD", "#ff7f0e", _previous_in_chain, _along_chain, True, True,
           min_guides=1, max_guides=1),
    # At least the teacher and one TA: a DGKD model guided by the teacher alone is the KD run.
    Method("dgkd", "DGKD", "#2ca02c", _teacher_and_every_larger_ta, _along_chain, True, True,
           min_guides=2, max_guides=None),
    # Its dropping applies to the final student only: its TAs are DGKD's.
    Method("sdgkd", "Stochastic DGKD", "#d62728", _teacher_and_every_larger_ta, _along_chain,
           True, False, stochastic=True, min_guides=2, max_guides=None),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
OTHER_COLOUR = "#9467bd"  # anything not in the registry (never expected)


def get_method(name: str) -> Method:
    """The registry entry of `name`; ValueError naming the allowed methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}") from None


def check_guides(name: str, n_guides: int, keep_prob: float | None, drop_num: int = 0) -> None:
    """ValueError (one line) unless a run of method `name` with `n_guides` guide checkpoints,
    loss.keep_prob `keep_prob` and loss.drop_num `drop_num` is what the method is: the rule the
    workflow's plan follows. A stochastic run drops guides by keep_prob (each guide kept with
    that probability, the paper) or drop_num (exactly that many dropped, the released code);
    that it sets only one is checked where the run config is resolved (dgkd_core.config)."""
    method = get_method(name)
    low, high = method.min_guides, method.max_guides
    if not low <= n_guides <= (n_guides if high is None else high):
        need = ("no" if high == 0 else f"exactly {low}" if low == high
                else f"at least {low}" if high is None else f"{low} to {high}")
        hint = ("; a model guided by the teacher alone is the KD run (method 'kd')"
                if method.kd_when_teacher_only and n_guides == 1 else "")
        raise ValueError(f"method {name!r} takes {need} guide checkpoint"
                         f"{'' if low == high == 1 else 's'}, but {n_guides} "
                         f"{'was' if n_guides == 1 else 'were'} given{hint}")
    dropping = keep_prob is not None or drop_num > 0
    if method.stochastic and not dropping:
        raise ValueError(f"method {name!r} needs loss.keep_prob (the probability of keeping each "
                         "guide) or loss.drop_num (guides dropped per batch); neither is set")
    if not method.stochastic and dropping:
        what = f"loss.keep_prob is {keep_prob}" if keep_prob is not None else (
            f"loss.drop_num is {drop_num}")
        raise ValueError(f"{what} but method is {name!r}; dropping guides makes a run "
                         "stochastic DGKD (method 'sdgkd')")
    if drop_num > n_guides:
        raise ValueError(f"loss.drop_num is {drop_num} but the run has only {n_guides} guides")


def canonical_method(name: str, lineage: Lineage) -> str:
    """`kd` for a TAKD or DGKD model whose only guide is the teacher, `name` otherwise."""
    return "kd" if get_method(name).kd_when_teacher_only and len(lineage) == 2 else name


def guide_specs(name: str, lineage: Lineage) -> list[GuideSpec]:
    """(method, lineage) of each run that guides the run (name, lineage), teacher first."""
    return get_method(name).guide_rule(tuple(lineage))


def label(name: str, keep_prob: float | None = None, drop_num: int | None = None) -> str:
    """Display label: `Stochastic DGKD (p=0.75)` or `Stochastic DGKD (drop 1)` for a stochastic
    run with its dropping; NaN (pandas' missing value) counts as not given."""
    method = REGISTRY.get(name)
    text = method.label if method else name
    if method is None or not method.stochastic:
        return text
    if keep_prob is not None and keep_prob == keep_prob:  # x == x: False for NaN
        return f"{text} (p={keep_prob:g})"
    if drop_num is not None and drop_num == drop_num and drop_num > 0:
        return f"{text} (drop {int(drop_num)})"
    return text


def colour(name: str) -> str:
    method = REGISTRY.get(name)
    return method.colour if method else OTHER_COLOUR
