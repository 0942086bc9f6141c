"""Published numbers to compare with, each with its source and protocol: the only place they
are written (their sources: docs/paper.md).

A protocol is one published experiment: whose table, how long each model trained, from which
teacher, and how the reported number was chosen. Student top-1 accuracies (%) are keyed by
dataset, method and lineage (teacher, TAs, student). A value matches a run only when the whole
lineage matches. The rows of one chain (its NoKD, KD, TAKD, DGKD, ... rows) take values of one
protocol only (`published_for_rows`): a NoKD cell from a 150-epoch experiment never sits beside
a TAKD cell from an 80-epoch one.
"""

from __future__ import annotations

from dataclasses import dataclass

from dgkd_core.method.registry import canonical_method

ANY_TAS = None  # the source does not say which TAs were used


@dataclass(frozen=True)
class Protocol:
    """One published experiment."""
    name: str                # how tables and figures name it
    epochs: int | None       # every model's training length; None: not known
    teacher: str
    selection: str           # how the reported number was chosen
    notes: str = ""

    def describe(self) -> str:
        epochs = f"{self.epochs} epochs" if self.epochs else "epochs not known"
        text = f"{epochs}, teacher {self.teacher}; reported number: {self.selection}"
        return text + (f"; {self.notes}" if self.notes else "")


@dataclass(frozen=True)
class PaperValue:
    top1: float
    source: str              # who published the number
    protocol: Protocol
    approximate: bool = False  # "about", or recovered without confirmation
    likely: bool = False       # its protocol is inferred, not stated by the source
    note: str = ""

    @property
    def recipe(self) -> str:
        """How the source trained: what a reader must know before comparing with this project."""
        text = f"{self.source}; {self.protocol.describe()}"
        if self.likely:
            text += "; this value's protocol is likely, not stated (docs/paper.md)"
        return text + (f"; {self.note}" if self.note else "")

    def label(self) -> str:
        return ("≈" if self.approximate else "") + f"{self.top1:.2f}"


DGKD = "DGKD (ICCV 2021)"
TAKD = "TAKD paper (AAAI 2020)"
_DGKD_SELECTION = ("not stated; its released code keeps the best test epoch, so probably "
                   "best-epoch numbers (an inference)")
DGKD_TABLE = Protocol("DGKD paper, CIFAR-100 plain-CNN table", None, "plane10", _DGKD_SELECTION,
                      "its λ, T, seeds and NoKD/KD cells were not recovered")
DGKD_7_TAS = Protocol("DGKD paper, 7-TA study", None, "plane10", _DGKD_SELECTION)
DGKD_IMAGENET = Protocol("DGKD paper, ImageNet (low-trust summary)", None, "resnet34",
                         _DGKD_SELECTION, "its TAs and recipe are not known")
TAKD_RESNET26 = Protocol(
    "TAKD paper, resnet26-teacher table (80 epochs)", 80, "resnet26", "not stated",
    "DGKD's values for this chain are likely of this table: DGKD prints its TAKD 88.01")
TAKD_SEARCH = Protocol(
    "TAKD paper, Tables 1-3 (150 epochs, best of 120 trials)", 150, "resnet110 or plane10",
    "the best test accuracy over 120 search trials of λ, T and seed", "one TA")
PROTOCOLS = (DGKD_TABLE, DGKD_7_TAS, DGKD_IMAGENET, TAKD_RESNET26, TAKD_SEARCH)
# Protocol name -> what it is, for the notes under a table.
RECIPES = {p.name: p.describe() for p in PROTOCOLS}

_PLAIN_TAS = ("plane8", "plane6", "plane4")
_PLAIN_7_TAS = ("plane9", "plane8", "plane7", "plane6", "plane5", "plane4", "plane3")
_RESNET_TAS = ("resnet20", "resnet14")


def _resnet26_table() -> dict:
    """TAKD's resnet26-teacher table (CIFAR-10, 80 epochs), and DGKD's values likely of it."""
    out = {}
    # Methods in the TAKD paper's column order; FitNet ... Mutual are not methods of this project.
    methods = ("nokd", "kd", "fitnet", "at", "fsp", "bss", "mutual", "takd")
    for student, row in (("resnet8", (86.02, 86.66, 86.73, 86.86, 87.07, 87.32, 87.71, 88.01)),
                         ("resnet14", (89.11, 89.75, 89.72, 89.84, 89.92, 90.34, 90.54, 91.23))):
        for method, top1 in zip(methods, row):
            teacher = None if method == "nokd" else "resnet26"
            tas = ANY_TAS if method == "takd" else ()
            out["cifar10", method, teacher, tas, student, None] = PaperValue(
                top1, TAKD, TAKD_RESNET26)
    out["cifar10", "dgkd", "resnet26", _RESNET_TAS, "resnet8", None] = PaperValue(
        89.02, DGKD, TAKD_RESNET26, likely=True)
    out["cifar10", "sdgkd", "resnet26", _RESNET_TAS, "resnet8", 0.75] = PaperValue(
        89.66, DGKD, TAKD_RESNET26, approximate=True, likely=True)
    return out


def _takd_search_tables() -> dict:
    """TAKD's Table 1 (NoKD / KD / TAKD) and Tables 2-3 (TAKD by TA size): 150 epochs."""
    out = {}
    table1 = {("cifar10", "plane10", "plane4", "plane2"): (70.16, 72.57, 73.51),
              ("cifar100", "plane10", "plane4", "plane2"): (41.09, 44.57, 44.92),
              ("cifar10", "resnet110", "resnet20", "resnet8"): (88.52, 88.65, 88.98),
              ("cifar100", "resnet110", "resnet20", "resnet8"): (61.37, 61.41, 61.82)}
    for (dataset, teacher, ta, student), (nokd, kd, takd) in table1.items():
        out[dataset, "nokd", None, (), student, None] = PaperValue(nokd, TAKD, TAKD_SEARCH)
        out[dataset, "kd", teacher, (), student, None] = PaperValue(kd, TAKD, TAKD_SEARCH)
        out[dataset, "takd", teacher, (ta,), student, None] = PaperValue(takd, TAKD, TAKD_SEARCH)
    sweeps = {("cifar10", "plane10", "plane2"): {"plane8": 72.75, "plane6": 73.15},
              ("cifar10", "resnet110", "resnet8"): {"resnet56": 88.70, "resnet32": 88.73,
                                                    "resnet14": 88.98},
              ("cifar100", "resnet110", "resnet8"): {"resnet56": 61.47, "resnet32": 61.55,
                                                     "resnet14": 61.5}}
    for (dataset, teacher, student), by_ta in sweeps.items():
        for ta, top1 in by_ta.items():
            out[dataset, "takd", teacher, (ta,), student, None] = PaperValue(
                top1, TAKD, TAKD_SEARCH)
    # Table 3 gives 88.90 for TA resnet20 on CIFAR-10, Table 1 88.98: one key holds one value.
    key = ("cifar10", "takd", "resnet110", ("resnet20",), "resnet8", None)
    out[key] = PaperValue(88.98, TAKD, TAKD_SEARCH, note="Table 1's; Table 3 gives 88.90")
    return out


# (dataset, method, teacher, TAs, student, keep_prob) -> value; teacher None for nokd.
_DGKD_VALUES: dict[tuple, PaperValue] = {
    ("cifar100", "takd", "plane10", _PLAIN_TAS, "plane2", None): PaperValue(45.14, DGKD, DGKD_TABLE),
    ("cifar100", "dgkd", "plane10", _PLAIN_TAS, "plane2", None): PaperValue(48.92, DGKD, DGKD_TABLE),
    ("cifar100", "sdgkd", "plane10", _PLAIN_TAS, "plane2", 0.75):
        PaperValue(50.15, DGKD, DGKD_TABLE, approximate=True),
    ("cifar100", "takd", "plane10", _PLAIN_7_TAS, "plane2", None):
        PaperValue(44.07, DGKD, DGKD_7_TAS),
    ("cifar100", "dgkd", "plane10", _PLAIN_7_TAS, "plane2", None):
        PaperValue(49.56, DGKD, DGKD_7_TAS),
    ("imagenet", "takd", "resnet34", ANY_TAS, "resnet18", None):
        PaperValue(71.37, DGKD, DGKD_IMAGENET, approximate=True),
    ("imagenet", "dgkd", "resnet34", ANY_TAS, "resnet18", None):
        PaperValue(71.73, DGKD, DGKD_IMAGENET, approximate=True),
}


def _by_key(*tables: dict) -> dict[tuple, list[PaperValue]]:
    """Key -> its values, one per experiment: one experiment (table) holds one value per key,
    but two experiments may publish the same key (NoKD of resnet8 at 80 and at 150 epochs)."""
    out: dict[tuple, list[PaperValue]] = {}
    for table in tables:
        for key, value in table.items():
            out.setdefault(key, []).append(value)
    return out


_VALUES = _by_key(_DGKD_VALUES, _resnet26_table(), _takd_search_tables())


def all_values() -> list[tuple[tuple, PaperValue]]:
    """Every published value with its (dataset, method, teacher, TAs, student, keep_prob)."""
    return [(key, value) for key, values in _VALUES.items() for value in values]


def _candidates(dataset: str, method: str, lineage, keep_prob) -> list[PaperValue]:
    lineage = tuple(lineage)
    method = canonical_method(method, lineage)
    teacher, tas = (None, ()) if len(lineage) == 1 else (lineage[0], lineage[1:-1])
    found = []
    for key in ((dataset, method, teacher, tas, lineage[-1], keep_prob),
                (dataset, method, teacher, ANY_TAS, lineage[-1], keep_prob)):
        found += _VALUES.get(key, [])
    return found


def paper_value(dataset: str, method: str, lineage, keep_prob: float | None = None,
                protocol: Protocol | None = None) -> PaperValue | None:
    """The published top-1 for this experiment, or None.

    lineage: teacher first, then the TAs, the student last (a single model for nokd). A model
    trained from the teacher alone by TAKD or DGKD is KD. protocol: only that experiment's value;
    without it, a value only where a single experiment published one (NoKD of resnet8 on CIFAR-10
    is in two, at 80 and 150 epochs: None)."""
    found = [v for v in _candidates(dataset, method, lineage, keep_prob)
             if protocol is None or v.protocol == protocol]
    return found[0] if len({v.protocol for v in found}) == 1 else None


def chain_protocol(dataset: str, lineage) -> Protocol | None:
    """The published experiment a chain with TAs belongs to (by its TAKD or DGKD value)."""
    lineage = tuple(lineage)
    if len(lineage) < 3:
        return None
    found = {v.protocol for method in ("takd", "dgkd")
             for v in _candidates(dataset, method, lineage, None)}
    return found.pop() if len(found) == 1 else None


def published_for_rows(rows) -> list[PaperValue | None]:
    """The published value of each (dataset, method, lineage, keep_prob) row, one protocol per
    chain. A row with TAs takes its chain's experiment (chain_protocol). A NoKD or KD row takes
    the experiment of the rows with TAs of its dataset and student, and no value where those
    belong to no experiment or to several; without such rows, a value only where a single
    experiment published one."""
    rows = [(d, m, tuple(lineage), k) for d, m, lineage, k in rows]
    protocols: dict[tuple, set] = {}
    for dataset, _, lineage, _ in rows:
        if len(lineage) >= 3:
            protocols.setdefault((dataset, lineage[-1]), set()).add(
                chain_protocol(dataset, lineage))
    out = []
    for dataset, method, lineage, keep_prob in rows:
        chain = ({chain_protocol(dataset, lineage)} if len(lineage) >= 3
                 else protocols.get((dataset, lineage[-1])))
        if chain is None:
            out.append(paper_value(dataset, method, lineage, keep_prob))
        elif len(chain) == 1 and None not in chain:
            out.append(paper_value(dataset, method, lineage, keep_prob, next(iter(chain))))
        else:
            out.append(None)
    return out
