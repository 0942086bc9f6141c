"""Which mechanism a fused group's `auto` runs, per device kind: the one place that choice is
made (dgkd_core.training.fused asks `auto_mechanism`).

The choice follows measurements of `python -m dgkd_core bench --fused`, recorded in
`CHOICES` with their device, date and command (the figures themselves are in
docs/performance.md, "Horizontal fusion"). A kind switches to `horizontal` only where it wins
clearly: its members end within float rounding of their solo runs, not bit-identical, so a tie
keeps the exact mechanism. A kind not yet measured says so and carries the issue's
expectation until a GPU window measures it; update its entry then.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHOICES", "MECHANISMS", "MechanismChoice", "auto_mechanism"]

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
                 "resnet8 students stacked run 9.3x fewer computing ops a round than 15 "
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
