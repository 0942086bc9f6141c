"""Which mechanism a fused group's `auto` runs, per device kind: the one place that choice is
made (dgkd_core.training.fused asks `auto_mechanism`).

The choice follows measurements of `python -m dgkd_core bench --fused`, recorded in
`CHOICES` with their device, date and command (the figures themselves are in
docs/performance.md, "Horizontal fusion"). A kind switches to `horizontal` only where it wins
clearly: its members end within float rounding of their solo runs, not bit-identical, so a tie
keeps the exact mechanism. A kind not yet measured says so and carries the issue's
expectation until a GPU window measures it; update its entry then.

A GPU window's campaign does not wait for that update: `window_fuse_choice` reads the figures
the window's own `bench --fused` stage just measured on that GPU (ci/gpu_run.sh,
`python -m dgkd_core campaign fuse-choice`) and fuses the campaign's runs only on a clear win.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHOICES", "MECHANISMS", "MechanismChoice", "WindowFuse", "auto_mechanism",
           "window_fuse_choice"]

# What a fused group may be asked to run (`train-group --mechanism`, the workflow's
# `fuse_mechanism`): auto resolves per device kind (auto_mechanism).
MECHANISMS = ("auto", "cuda_streams", "sequential", "horizontal")


@dataclass(frozen=True)
class MechanismChoice:
    """`mechanism` for groups of one architecture (stackable); `otherwise` for the rest.
    evidence: where the choice comes from (a measurement: device, date, command, result; or
    why it stands unmeasured)."""

    mechanism: str
    otherwise: str
    evidence: str
    measured: bool


CHOICES: dict[str, MechanismChoice] = {
    "cpu": MechanismChoice(
        "sequential", "sequential", measured=True,
        evidence="2026-12-04, 2-core x86_64 CPU shared with other jobs, torch 2.14.1: "
                 "`python -m dgkd_core bench --fused --device cpu --k 1,3,5 --teachers 0 "
                 "--steps 5 --mechanisms sequential,horizontal,solo`: horizontal 0.18-0.76x "
                 "sequential for K = 1-5 resnet8 students with tables (0.69-1.16x in two runs "
                 "under heavier load); a CPU step is not launch-bound, and sequential keeps "
                 "solo's maths bit for bit"),
    "cuda": MechanismChoice(
        "cuda_streams", "cuda_streams", measured=False,
        evidence="not measured yet (no GPU window since horizontal was built): issue 22 "
                 "expects K-times-wider kernels to beat K launch-bound steps on a GPU, but a "
                 "kind switches to horizontal only on a measured, clear win (its members end "
                 "within float rounding of solo, not bit for bit); what speaks for it: K = 15 "
                 "resnet8 students stacked run 10.8x fewer computing ops a round than 15 "
                 "steps one after another (`bench --fused` ops_per_round, CPU, 2026-12-05); "
                 "ci/gpu_run.sh's `bench --fused` stage measures the speed, then set "
                 "horizontal here if it wins"),
}


def auto_mechanism(device_type: str, stackable: bool) -> str:
    """The mechanism `auto` runs for members on devices of kind `device_type` ("cpu", "cuda";
    any other kind, or members on mixed kinds: "mixed", runs sequential). stackable: the
    members can be stacked (dgkd_core.training.horizontal.check_stackable passes)."""
    choice = CHOICES.get(device_type)
    if choice is None:
        return "sequential"
    return choice.mechanism if stackable else choice.otherwise


# A GPU window's campaign fuses only on a clear win measured in that window (ci/gpu_run.sh stage
# 3): the fused workflow is newer than the solo jobs, horizontal is float rounding apart from
# solo, and the campaign's alternative already shares the GPU among several solo jobs.
WINDOW_FUSE_MARGIN = 1.5  # the fused students' aggregate img/s over K solo runs', at least
TEACHER_FLOOR = 0.9  # and the fused teachers not much slower than solo (they fuse too)
_STUDENTS = "students_resnet8_k15"  # Table 1's 15 resnet8 students: most of the row's runs


@dataclass(frozen=True)
class WindowFuse:
    """What one window's campaign trains with: `mechanism` (the workflow's fuse_mechanism,
    with fuse: true) or None (every run its own job), and why (one line, with the figures)."""

    mechanism: str | None
    reason: str


def window_fuse_choice(workloads: list[dict], margin: float = WINDOW_FUSE_MARGIN
                       ) -> WindowFuse:
    """The fastest of horizontal and cuda_streams for K = 15 resnet8 students, where it
    reaches `margin` x the aggregate img/s of their solo runs (sequential's where solo was not
    measured) and the teachers' workloads measured by it reach TEACHER_FLOOR x theirs; else
    None. workloads: `bench --fused`'s entries (fused.json's "workloads"; failed or skipped
    entries carry no aggregate_img_s and count as not measured)."""
    img_s = {(e["workload"], e["mechanism"]): e["aggregate_img_s"]
             for e in workloads if e.get("aggregate_img_s")}

    def ratio(workload: str, mechanism: str) -> float | None:
        base = img_s.get((workload, "solo")) or img_s.get((workload, "sequential"))
        fused = img_s.get((workload, mechanism))
        return None if base is None or fused is None else fused / base

    candidates = [(r, m) for m in ("horizontal", "cuda_streams")
                  if (r := ratio(_STUDENTS, m)) is not None]
    if not candidates:
        return WindowFuse(None, f"not measured: {_STUDENTS} needs a solo or sequential "
                                f"figure and a horizontal or cuda_streams one")
    best_ratio, best = max(candidates)
    if best_ratio < margin:
        return WindowFuse(None, f"no clear win: {_STUDENTS} {best} {best_ratio:.2f}x solo "
                                f"(fuses from {margin}x)")
    why = f"{_STUDENTS} {best} {best_ratio:.2f}x solo"
    for workload in sorted({w for w, _ in img_s if w.startswith("teachers_")}):
        teacher_ratio = ratio(workload, best)
        if teacher_ratio is not None and teacher_ratio < TEACHER_FLOOR:
            return WindowFuse(None, f"{why}, but {workload} {teacher_ratio:.2f}x solo "
                                    f"(below {TEACHER_FLOOR}x)")
        if teacher_ratio is not None:
            why += f", {workload} {teacher_ratio:.2f}x"
    return WindowFuse(best, why)
