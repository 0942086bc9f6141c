"""The one place that builds output paths from a lineage (docs/design.md, "Output layout").

    results/data/{dataset}.pt
    results/runs/{dataset}/seed{seed}/{method}/{lineage}/model.pt|metrics.json|history.csv
                                                         (and guide_table.pt, for a guide)
    results/tensorboard/{dataset}/seed{seed}/{method}/{lineage}/   (logging.tensorboard)

`lineage` is the chain of models that led to a model, joined by `-`, ending in the model itself:
`nokd/resnet26` is a teacher, `kd/resnet26-resnet20` the first TA (shared by TAKD and DGKD),
`dgkd/resnet26-resnet20-resnet14-resnet8` a DGKD student. A stochastic-DGKD run carries its keep
probability in the method directory (`sdgkd-p0.75`), so a keep-probability sweep gets one
directory per value.

Every function works on wildcard patterns too (`run_file("{dataset}", "{seed}", ...)`), which is
how the Snakemake rules declare their outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from dgkd_core.method.registry import METHODS, REGISTRY, canonical_method, get_method

RESULTS = "results"
RUN_FILES = ("model.pt", "metrics.json", "history.csv")
# A guide's table of logits (dgkd_core.guides.logit_tables), beside its model.pt: built where the plan
# uses one (Plan.uses_table), temporary unless keep_guide_tables.
GUIDE_TABLE_FILE = "guide_table.pt"
_LINEAGE_SEP = "-"
_KEEP_PREFIX = "-p"
_DROP_PREFIX = "-d"
_CONVENTION_SEP = "+"  # `dgkd+released_code`: a run of the convention ablation
# `dgkd@lam0.5_T4_val5000`: a run of the grid ablation (λ, T, validation images).
_GRID_SEP = "@"
_GRID_RE = re.compile(r"lam([0-9.e-]+)_T([0-9.e-]+)_val([0-9]+)")

# Regular expressions for the rules' wildcard_constraints. A stochastic method's directory
# carries its dropping: a keep probability (`sdgkd-p0.75`) or a number dropped (`sdgkd-d1`); a
# run of the convention ablation carries its loss convention (`dgkd+released_code`).
WILDCARD_CONSTRAINTS = {
    "dataset": r"[A-Za-z0-9_]+",
    "seed": r"\d+",
    "method": "(" + "|".join(
        f"{m.name}({re.escape(_KEEP_PREFIX)}[0-9.e-]+|{re.escape(_DROP_PREFIX)}[0-9]+)"
        if m.stochastic else m.name for m in REGISTRY.values())
    + rf")({re.escape(_CONVENTION_SEP)}[a-z_]+)?"
    + rf"({re.escape(_GRID_SEP)}lam[0-9.e-]+_T[0-9.e-]+_val[0-9]+)?",
    "lineage": r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*",
}


def lineage_constraint(lineages, *, matching: bool) -> str:
    """A regular expression for the `lineage` wildcard: exactly `lineages` (matching=True), or
    every lineage but those (matching=False). How the imported runs (dgkd_core.experiment.plan) go to the
    import rule and every other run to the training rule, without ambiguity."""
    listed = "|".join(re.escape(lineage) for lineage in sorted(lineages))
    if matching:
        return f"(?:{listed})" if listed else "(?!)"  # (?!) matches nothing
    if not listed:
        return WILDCARD_CONSTRAINTS["lineage"]
    # A listed lineage is refused only where it ends: `plane5` is, `plane5-plane4` is not.
    return f"(?!(?:{listed})(?![A-Za-z0-9_-])){WILDCARD_CONSTRAINTS['lineage']}"


@dataclass(frozen=True)
class Run:
    """One training job, identified by where its outputs go."""

    dataset: str
    seed: int
    method: str  # a name of dgkd_core.method.registry.METHODS
    lineage: tuple[str, ...]  # teacher first, the trained model last
    keep_prob: float | None = None  # stochastic (sdgkd) only: each guide kept with it
    drop_num: int | None = None  # stochastic only, instead: exactly this many guides dropped
    convention: str | None = None  # the loss convention, where it is not the config's own
    grid: tuple[float, float, int] | None = None  # grid ablation: (λ, T, validation images)

    @property
    def model(self) -> str:
        return self.lineage[-1]

    @property
    def method_dir(self) -> str:
        return method_dir(self.method, self.keep_prob, self.drop_num, self.convention,
                          self.grid)

    @property
    def lineage_str(self) -> str:
        return lineage_text(self.lineage)

    @property
    def dir(self) -> str:
        return run_dir(self.dataset, self.seed, self.method_dir, self.lineage_str)

    def file(self, name: str) -> str:
        return run_file(self.dataset, self.seed, self.method_dir, self.lineage_str, name)

    @property
    def tensorboard_dir(self) -> str:
        return tensorboard_dir(self.dataset, self.seed, self.method_dir, self.lineage_str)


def make_run(dataset: str, seed: int, method: str, lineage, keep_prob: float | None = None,
             drop_num: int | None = None, convention: str | None = None,
             grid: tuple[float, float, int] | None = None) -> Run:
    """The canonical run for a method and lineage.

    A TAKD or DGKD model guided by the teacher alone is `kd`; a stochastic (sdgkd) run has
    `keep_prob` or `drop_num`, and no other run has either. `convention`: a loss
    convention other than the config's (the convention ablation); a model trained alone has none.
    Raises ValueError for a lineage that does not fit the method."""
    lineage = tuple(lineage)
    get_method(method)  # a clear error for an unknown method
    if not lineage or any(not m or _LINEAGE_SEP in m for m in lineage):
        raise ValueError(f"bad lineage {lineage!r}: model names, none containing '-'")
    method = canonical_method(method, lineage)
    _check_guide_count(method, lineage)
    # Both set is refused where the run config is resolved (dgkd_core.config), not here.
    if get_method(method).stochastic != (keep_prob is not None or drop_num is not None):
        raise ValueError("a stochastic DGKD (sdgkd) run has keep_prob or drop_num, and no "
                         "other run has either")
    if convention is not None and method == "nokd":
        convention = None  # cross-entropy alone: every convention is the same loss
    if grid is not None and method == "nokd":
        raise ValueError("a grid run sets the KD weight and temperature; nokd has neither")
    return Run(dataset, int(seed), method, lineage,
               None if keep_prob is None else float(keep_prob),
               None if drop_num is None else int(drop_num), convention,
               None if grid is None else (float(grid[0]), float(grid[1]), int(grid[2])))


def _check_guide_count(method: str, lineage: tuple[str, ...]) -> None:
    """ValueError unless the guides of (method, lineage) number what the method takes
    (registry min_guides..max_guides), a model with guides has a lineage above it, and the last
    guide is the model just above it in the lineage."""
    entry = get_method(method)
    guides = entry.guide_rule(lineage)
    n, high = len(guides), entry.max_guides
    fits = (entry.min_guides <= n <= (n if high is None else high)
            and (n == 0) == (len(lineage) == 1)
            and (n == 0 or guides[-1][1] == lineage[:-1]))
    if not fits:
        low = entry.min_guides
        need = ("no guides" if high == 0 else f"exactly {low} guide" if low == high
                else f"at least {low} guides" if high is None else f"{low} to {high} guides")
        raise ValueError(f"method {method} does not fit lineage {lineage_text(lineage)}: a run "
                         f"of it has {need}, the last one the model just above it")


def lineage_text(lineage) -> str:
    """A lineage as its directory name: ("resnet26", "resnet20") -> `resnet26-resnet20`."""
    return _LINEAGE_SEP.join(lineage)


def method_dir(method: str, keep_prob: float | None = None, drop_num: int | None = None,
               convention: str | None = None, grid=None) -> str:
    """`sdgkd-p0.75` or `sdgkd-d1` for stochastic DGKD, the method's name otherwise; then
    `+<convention>` for a run of the convention ablation."""
    if keep_prob is not None:
        text = f"{method}{_KEEP_PREFIX}{keep_prob:g}"
    else:
        text = method if drop_num is None else f"{method}{_DROP_PREFIX}{drop_num}"
    text = text if convention is None else f"{text}{_CONVENTION_SEP}{convention}"
    if grid is None:
        return text
    return f"{text}{_GRID_SEP}lam{grid[0]:g}_T{grid[1]:g}_val{grid[2]}"


def parse_method_dir(text: str) -> tuple[str, float | None, int | None, str | None]:
    """Inverse of `method_dir`: `sdgkd-p0.75` -> ("sdgkd", 0.75, None, None),
    `dgkd+released_code` -> ("dgkd", None, None, "released_code")."""
    text, sep, convention = text.partition(_CONVENTION_SEP)
    convention = convention if sep else None
    method, sep, p = text.partition(_KEEP_PREFIX)
    if sep:
        return method, float(p), None, convention
    method, sep, k = text.partition(_DROP_PREFIX)
    return method, None, (int(k) if sep else None), convention


def parse_grid(text: str) -> tuple[str, tuple[float, float, int] | None]:
    """`dgkd@lam0.5_T4_val500` -> ("dgkd", (0.5, 4.0, 500)); text without `@` -> (text, None)."""
    text, sep, grid = text.partition(_GRID_SEP)
    match = _GRID_RE.fullmatch(grid) if sep else None
    if sep and match is None:
        raise ValueError(f"bad grid setting {grid!r}: expected lam<λ>_T<T>_val<images>")
    return text, (float(match[1]), float(match[2]), int(match[3])) if match else None


def run_from_wildcards(dataset: str, seed, method: str, lineage: str) -> Run:
    """The Run that a rule's wildcards name (method directory and lineage as in the path)."""
    method, grid = parse_grid(method)
    name, keep_prob, drop_num, convention = parse_method_dir(method)
    return make_run(dataset, int(seed), name, lineage.split(_LINEAGE_SEP), keep_prob, drop_num,
                    convention, grid)


_RUN_RE = re.compile(
    rf"(?:^|/){RESULTS}/runs/(?P<dataset>[^/]+)/seed(?P<seed>\d+)/(?P<method>[^/]+)/"
    r"(?P<lineage>[^/]+)/[^/]+$"
)


def run_from_path(path) -> Run:
    """The Run whose output `path` is (any of its files)."""
    m = _RUN_RE.search(PurePosixPath(path).as_posix())
    if not m:
        raise ValueError(f"{path} is not a run output ({RESULTS}/runs/<dataset>/seed<seed>/"
                         "<method>/<lineage>/<file>)")
    return run_from_wildcards(**m.groupdict())


# ------------------------------------------------------------------ the layout itself


def data_file(dataset: str) -> str:
    return f"{RESULTS}/data/{dataset}.pt"


def extracted_dir(dataset: str) -> str:
    """Where a dataset given as an archive is unpacked (temporary; removed once prepared)."""
    return f"{RESULTS}/extracted/{dataset}"


def run_dir(dataset, seed, method_directory: str, lineage: str) -> str:
    return f"{RESULTS}/runs/{dataset}/seed{seed}/{method_directory}/{lineage}"


def run_file(dataset, seed, method_directory: str, lineage: str, name: str) -> str:
    if name not in (*RUN_FILES, GUIDE_TABLE_FILE):
        raise ValueError(f"a run writes {', '.join(RUN_FILES)} (and {GUIDE_TABLE_FILE}), not "
                         f"{name!r}")
    return f"{run_dir(dataset, seed, method_directory, lineage)}/{name}"


def tensorboard_dir(dataset, seed, method_directory: str, lineage: str) -> str:
    """A run's TensorBoard event folder: one tree for every run, so that
    `tensorboard --logdir results/tensorboard` compares them all."""
    return f"{RESULTS}/tensorboard/{dataset}/seed{seed}/{method_directory}/{lineage}"


def train_log(dataset, seed, method_directory: str, lineage: str) -> str:
    return f"{RESULTS}/logs/train/{dataset}/seed{seed}/{method_directory}/{lineage}.log"


def train_benchmark(dataset, seed, method_directory: str, lineage: str) -> str:
    return f"{RESULTS}/benchmarks/train/{dataset}/seed{seed}/{method_directory}/{lineage}.tsv"


def guide_table_log(dataset, seed, method_directory: str, lineage: str) -> str:
    """Log of the job that builds a guide's table (rule guide_table)."""
    return f"{RESULTS}/logs/guide_table/{dataset}/seed{seed}/{method_directory}/{lineage}.log"


def guide_table_benchmark(dataset, seed, method_directory: str, lineage: str) -> str:
    return (f"{RESULTS}/benchmarks/guide_table/{dataset}/seed{seed}/{method_directory}/"
            f"{lineage}.tsv")


def import_log(dataset, seed, method_directory: str, lineage: str) -> str:
    """Log of an import job (a teacher or TA trained elsewhere, dgkd_core.experiment.importing)."""
    return f"{RESULTS}/logs/import/{dataset}/seed{seed}/{method_directory}/{lineage}.log"


def log_file(step: str, name: str | None = None) -> str:
    """Log of a non-training step (`prepare_data`, `table1`, ...)."""
    return f"{RESULTS}/logs/{step}" + (f"/{name}.log" if name else ".log")


def benchmark_file(step: str, name: str | None = None) -> str:
    return f"{RESULTS}/benchmarks/{step}" + (f"/{name}.tsv" if name else ".tsv")


def table_file(name: str, ext: str) -> str:
    """`results/table1.csv`, `results/table1.html`, `results/runs.csv` (every trained model),
    `results/config.yaml` (the resolved config), `results/ablations/num_tas.csv` (name with /)."""
    return f"{RESULTS}/{name}.{ext}"


def figure_file(name: str, ext: str) -> str:
    return f"{RESULTS}/figures/{name}.{ext}"


def summary_file() -> str:
    """`results/summary.html`: the one page to show (dgkd_core.reporting.summary)."""
    return f"{RESULTS}/summary.html"


def table1_targets() -> list[str]:
    """Table 1's outputs: its table (CSV, Markdown, HTML, LaTeX), the guides' table (CSV,
    Markdown), every trained model's settings and numbers, the resolved config, its figures."""
    return [
        table_file("table1", "csv"), table_file("table1", "md"),
        table_file("table1", "html"), table_file("table1", "tex"),
        table_file("guides", "csv"), table_file("guides", "md"),
        table_file("runs", "csv"), table_file("config", "yaml"),
        *[figure_file(name, ext) for name in ("methods", "learning_curves")
          for ext in ("png", "pdf")],
    ]


def ablation_targets(name: str) -> list[str]:
    """An ablation's table (CSV, Markdown) and figure (PNG, PDF)."""
    return [table_file(f"ablations/{name}", "csv"), table_file(f"ablations/{name}", "md"),
            figure_file(f"ablation_{name}", "png"), figure_file(f"ablation_{name}", "pdf")]
