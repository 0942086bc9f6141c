"""The bad-input suite (docs/reliability.md): one table of bad inputs and faults.

Each case gives its input, the message fragment it must print, and is checked for what every bad
input promises: one line `error: ...` on stderr and exit status 2 (no traceback), nothing printed
on stdout, no file written and no file changed or lost in the case's folder. Before a case runs,
its output folder holds an earlier good run (`model.pt`, `metrics.json`, `history.csv`, copied
from the session's guide) and a `keep.txt`; afterwards every file there must be byte-identical
and no new file (an output, a temp file, a marker) may have appeared.

CLI cases run in-process through `dgkd_core.cli.main`; library cases (report, plan) call the
function and expect the exception. Placeholders in args and fragments: {data} the session's
prepared data, {guide} the session's guide checkpoint, {tmp} the case's folder, {out} its
output folder, {bad} a bad file the case's `prepare` made, plus what `prepare` adds to `vars`.
"""

from __future__ import annotations

import copy
import csv
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from dgkd_core.cli import main
from dgkd_core.data import prepare_dataset
from dgkd_core.experiment.plan import Plan
from dgkd_core.reporting.tables import ReportError, load_runs
from dgkd_core.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
FINAL_OUTPUTS = ("model.pt", "metrics.json", "history.csv")
GUIDE_SEED = 7  # the session guide differs from any (seed 0) run a case might wrongly train
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) dgkd_core[.\w]*: ")


# --------------------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad_input_data") / "synthetic.pt"
    prepare_dataset("synthetic", path, synthetic_train=128, synthetic_test=64)
    return path


@pytest.fixture(scope="session")
def guide(tiny_data, tmp_path_factory) -> Path:
    """A tiny trained model.pt (with its metrics.json and history.csv beside it)."""
    out = tmp_path_factory.mktemp("bad_input_guide") / "plane2"
    status = main(["train", *_sets(tiny_data, out), "--set", f"seed={GUIDE_SEED}"])
    assert status == 0, "the session guide could not be trained"
    return out / "model.pt"


def _sets(data, out) -> list[str]:
    pairs = ["model=plane2", "epochs=1", "batch_size=64", "device=cpu", f"data={data}",
             f"out_dir={out}"]
    return [arg for pair in pairs for arg in ("--set", pair)]


# --------------------------------------------------------------------------- the case type


@dataclass
class Ctx:
    """Where one case runs."""

    tmp: Path  # the case's folder: everything in it is snapshotted
    out: Path  # its output folder (tmp/out), holding the earlier good run
    data: Path  # the session's prepared data (outside tmp)
    guide: Path  # the session's guide checkpoint (outside tmp)
    bad: Path  # where `prepare` puts the bad file of the case (tmp/bad.pt by default)
    vars: dict = field(default_factory=dict)  # more placeholders, set by `prepare`

    def fill(self, text: str) -> str:
        return text.format(data=self.data, guide=self.guide, tmp=self.tmp, out=self.out,
                           bad=self.bad, **self.vars)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple  # CLI: argv (placeholders filled); library: (callable taking Ctx,)
    expect: str | tuple[str, ...]  # fragment(s) the error line (or stderr, status 0) must hold
    prepare: Callable[[Ctx], None] | None = None  # writes the bad input into ctx.tmp
    patch: Callable[[Ctx, pytest.MonkeyPatch], None] | None = None  # a fault, e.g. a full disk
    status: int = 2
    writes: tuple[str, ...] = ()  # files of ctx.out this case may create or replace
    check: Callable[[Ctx], None] | None = None  # more checks, after the common ones
    raises: type[BaseException] | None = None  # library cases: the exception expected
    marker: bool = False  # a crafted pickle would create tmp/MARKER: it must not exist

    def __str__(self) -> str:
        return self.id


def train(*sets: str) -> tuple:
    """`train` argv: the tiny defaults (plane2, 1 epoch, data, out_dir={out}) plus `sets`."""
    return ("train", *_sets("{data}", "{out}"), *[a for s in sets for a in ("--set", s)])


# --------------------------------------------------------------------------- bad inputs


def write(name: str, text: str) -> Callable[[Ctx], None]:
    def prepare(ctx: Ctx) -> None:
        (ctx.tmp / name).write_text(text)
    return prepare


def truncated_guide(ctx: Ctx) -> None:
    blob = ctx.guide.read_bytes()
    ctx.bad.write_bytes(blob[: len(blob) // 2])


def guide_with_other_architecture(ctx: Ctx) -> None:
    ckpt = torch.load(ctx.guide, map_location="cpu", weights_only=True)
    assert ckpt["model"] != "plane4"
    ckpt["model"] = "plane4"
    torch.save(ckpt, ctx.bad)


def guide_with_nan(ctx: Ctx) -> None:
    """A NaN in the last floating tensor: the message must name that one, not the first."""
    ckpt = torch.load(ctx.guide, map_location="cpu", weights_only=True)
    key = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point()][-1]
    tensor = ckpt["state_dict"][key].contiguous().clone()
    tensor.view(-1)[-1] = float("nan")
    ckpt["state_dict"][key] = tensor
    torch.save(ckpt, ctx.bad)
    ctx.vars["key"] = key


class WritesAFile:
    """Unpickling this calls open(path, "w"): the file appears if the loader runs code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(where: Callable[[Ctx], Path]) -> Callable[[Ctx], None]:
    def prepare(ctx: Ctx) -> None:
        torch.save({"state_dict": WritesAFile(ctx.tmp / "MARKER")}, where(ctx))
    return prepare


def disk_full(names: tuple[str, ...] | None = None) -> Callable[[Ctx, pytest.MonkeyPatch], None]:
    """os.fsync raises ENOSPC for the atomic writes' temp files in ctx.out (all of them, or only
    those of `names`); every other fsync goes through."""
    def patch(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc/self/fd to tell which file an fsync is for")
        real_fsync = os.fsync

        def fsync(fd):
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if target.parent == ctx.out and target.is_file() and (
                    names is None or any(target.name.startswith(f".{n}.") for n in names)):
                ctx.vars.setdefault("refused", []).append(target.name)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    return patch


def fsync_was_refused(ctx: Ctx) -> None:
    assert ctx.vars.get("refused"), "the fault was never injected: no write reached fsync"


def run_outputs_are_valid(ctx: Ctx) -> None:
    """The run completed from scratch: a loadable model.pt, metrics.json and history.csv of
    this run (seed 0, one epoch), and no resume state left."""
    ckpt = torch.load(ctx.out / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"] == "plane2" and ckpt["config"]["seed"] == 0
    metrics = json.loads((ctx.out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["seed"] == 0 and metrics["resumed"] is False
    assert metrics["config_hash"] == ckpt["config_hash"]
    with open(ctx.out / "history.csv", newline="") as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [1]
    assert not (ctx.out / "resume.pt").exists()


# Library cases: a callable of the Ctx.

def corrupt_metrics_json(ctx: Ctx) -> None:
    ctx.bad = ctx.tmp / "results/runs/synthetic/seed1/nokd/plane2/metrics.json"
    ctx.bad.parent.mkdir(parents=True)
    ctx.bad.write_text('{"epochs": 1, "top1_last": 5')  # cut off mid-file


def tiny_plan_with(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    """Plan(config/test_tiny.yaml edited by `edit`); the config dict must come back unchanged."""
    def call(ctx: Ctx) -> None:
        config = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
        Plan(copy.deepcopy(config))  # the unedited config is valid: the edit is what is refused
        edit(config)
        before = copy.deepcopy(config)
        try:
            Plan(config)
        finally:
            assert config == before, "Plan modified the config it was given"
    return call


def set_key(*path_and_value):
    *path, key, value = path_and_value

    def edit(config: dict) -> None:
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return edit


# --------------------------------------------------------------------------- the table


CASES = [
    # guides and methods
    Case("guides_string_is_one_path", train("method=kd", "guides=teacher/model.pt"),
         "checkpoint teacher/model.pt does not exist"),
    Case("kd_without_guide", train("method=kd"),
         "method 'kd' takes exactly 1 guide checkpoint, but 0 were given"),
    Case("nokd_with_guide", train("method=nokd", "guides={guide}"),
         "method 'nokd' takes no guide checkpoints, but 1 was given"),
    Case("sdgkd_without_dropping", train("method=sdgkd", "guides=[{guide}, {guide}]"),
         ("method 'sdgkd' needs loss.keep_prob", "loss.drop_num", "neither is set")),
    Case("keep_prob_and_drop_num",
         train("method=sdgkd", "guides=[{guide}, {guide}]", "loss.keep_prob=0.5",
               "loss.drop_num=1", "loss.drop_teacher=true"),
         "'loss.keep_prob' (0.5) and 'loss.drop_num' (1) are both set"),
    # the output folder
    Case("out_dir_is_a_file", train("out_dir={tmp}/taken"),
         "out_dir {tmp}/taken cannot be written: {tmp}/taken is a file, not a folder",
         prepare=write("taken", "an earlier file\n")),
    # --set and --config
    Case("key_and_subkey", train("epochs=1", "epochs.x=1"),
         ("epochs.x=1", "'epochs' is already set to 1, which has no keys")),
    Case("config_holds_a_list", ("train", "--config", "{tmp}/run.yaml", *train()[1:]),
         "--config {tmp}/run.yaml holds a list, not a mapping",
         prepare=write("run.yaml", "- model: plane2\n- epochs: 1\n")),
    Case("config_not_yaml", ("train", "--config", "{tmp}/run.yaml", *train()[1:]),
         "--config {tmp}/run.yaml is not valid YAML at line 2",
         prepare=write("run.yaml", "model: [plane2\nepochs: 1\n")),
    Case("config_missing", ("train", "--config", "{tmp}/nowhere.yaml", *train()[1:]),
         "cannot read --config {tmp}/nowhere.yaml: No such file or directory"),
    Case("lr_1e6_is_text", train("optimizer.lr=1e6"),
         ("'optimizer.lr' is '1e6'", "must be of type number", "write 1.0e6")),
    Case("seed_bool", train("seed=true"),
         "run-config key 'seed' is True, but it must be of type integer"),
    Case("epochs_float", train("epochs=4.0"),
         "run-config key 'epochs' is 4.0, but it must be of type integer"),
    Case("unknown_key", train("optimiser.lr=0.1"),
         ("unknown run-config key 'optimiser'", "optimizer")),
    # bad guide checkpoints
    Case("guide_truncated", train("method=kd", "guides={bad}"),
         "checkpoint {bad} is truncated or corrupt", prepare=truncated_guide),
    Case("guide_architecture_mismatch", train("method=kd", "guides={bad}"),
         "checkpoint {bad} does not fit its architecture 'plane4'",
         prepare=guide_with_other_architecture),
    Case("guide_nan_weight", train("method=kd", "guides={bad}"),
         "checkpoint {bad} holds non-finite values (inf or NaN) in '{key}'",
         prepare=guide_with_nan),
    Case("guide_malicious_pickle", train("method=kd", "guides={bad}"),
         ("checkpoint {bad} holds more than tensors and plain values", "not loaded"),
         prepare=malicious_pickle(lambda ctx: ctx.bad), marker=True),
    # a crafted resume state is ignored (not run), and the run completes from scratch
    Case("resume_malicious_pickle", train(),
         ("ignoring unreadable resume state {out}/resume.pt",
          "it holds more than tensors and plain values"),
         prepare=malicious_pickle(lambda ctx: ctx.out / "resume.pt"), marker=True, status=0,
         writes=(*FINAL_OUTPUTS, "resume.pt"), check=run_outputs_are_valid),
    # a full disk
    Case("disk_full_first_save", train(),
         "cannot write {out}/resume.pt: No space left on device (ENOSPC); the previous file, "
         "if any, is unchanged", patch=disk_full(), check=fsync_was_refused),
    Case("disk_full_final_save", train(),
         "cannot write {out}/model.pt: No space left on device (ENOSPC)",
         patch=disk_full(("model.pt",)), writes=("resume.pt",), check=fsync_was_refused),
    # evaluate and prepare-data
    Case("evaluate_corrupt_checkpoint",
         ("evaluate", "--checkpoint", "{bad}", "--data", "{data}", "--device", "cpu"),
         "checkpoint {bad} is truncated or corrupt", prepare=truncated_guide),
    Case("evaluate_malicious_data",
         ("evaluate", "--checkpoint", "{guide}", "--data", "{bad}", "--device", "cpu"),
         "prepared data file {bad} is unreadable: it holds more than tensors and plain values",
         prepare=malicious_pickle(lambda ctx: ctx.bad), marker=True),
    Case("evaluate_missing_data",
         ("evaluate", "--checkpoint", "{guide}", "--data", "{tmp}/nodata.pt", "--device", "cpu"),
         "prepared data file {tmp}/nodata.pt does not exist"),
    Case("prepare_missing_imagefolder",
         ("prepare-data", "--source", "imagefolder", "--root", "{tmp}/noroot",
          "--out", "{out}/data.pt"),
         "imagefolder root {tmp}/noroot does not exist"),
    # library: tables and the workflow plan
    Case("report_corrupt_metrics", (lambda ctx: load_runs([ctx.bad]),), "cannot read {bad}",
         prepare=corrupt_metrics_json, raises=ReportError),
    Case("plan_dataset_option_typo",
         (tiny_plan_with(set_key("datasets", "synthetic", "options",
                                 {"synthetic_trian": 5})),),
         ("unknown config key 'synthetic_trian'", "datasets.synthetic.options"),
         raises=ConfigError),
    Case("plan_seed_bool", (tiny_plan_with(set_key("seeds", [True])),),
         "config key 'seeds.0' is True, but it must be of type integer", raises=ConfigError),
    Case("plan_drop_num_per_role",
         (tiny_plan_with(set_key("hyperparameters", "per_role", "student",
                                 {"loss": {"drop_num": 1}})),),
         ("hyperparameters.per_role.student.loss.drop_num",
          "hyperparameters.per_method.sdgkd.loss.drop_num"),
         raises=ConfigError),
]


# --------------------------------------------------------------------------- runners


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def earlier_run(ctx: Ctx) -> None:
    """An earlier good run in the output folder, and a file of someone else's beside it."""
    ctx.out.mkdir()
    for name in FINAL_OUTPUTS:
        shutil.copy2(ctx.guide.with_name(name), ctx.out / name)
    (ctx.out / "keep.txt").write_text("written before the case ran\n")


def run_cli(case: Case, ctx: Ctx, capsys) -> str:
    """Run the CLI; returns the message checked against the fragments."""
    status = main([ctx.fill(a) for a in case.args])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert "Traceback" not in captured.err, captured.err
    assert status == case.status, captured.err
    if case.status == 0:
        return captured.err
    assert captured.out == "", f"a failed command printed a result: {captured.out!r}"
    assert lines and lines[-1].startswith("error: "), captured.err
    assert lines[-1].isprintable(), f"control characters in the error: {lines[-1]!r}"
    others = [line for line in lines[:-1] if not LOG_LINE.match(line)]
    assert not others, f"the error is not one line: {captured.err!r}"
    return lines[-1]


def run_library(case: Case, ctx: Ctx) -> str:
    (call,) = case.args
    with pytest.raises(case.raises) as info:
        call(ctx)
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
    return message


def test_case_ids_are_unique():
    ids = [c.values[0].id if hasattr(c, "values") else c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case: Case, tmp_path, tiny_data, guide, capsys, monkeypatch):
    ctx = Ctx(tmp=tmp_path, out=tmp_path / "out", data=tiny_data, guide=guide,
              bad=tmp_path / "bad.pt")
    earlier_run(ctx)
    if case.prepare:
        case.prepare(ctx)
    monkeypatch.chdir(tmp_path)  # relative paths (teacher/model.pt) resolve in the case folder
    before = snapshot(tmp_path)
    if case.patch:
        case.patch(ctx, monkeypatch)

    message = run_library(case, ctx) if case.raises else run_cli(case, ctx, capsys)
    monkeypatch.undo()  # the fault is over: checking reads files as usual

    fragments = (case.expect,) if isinstance(case.expect, str) else case.expect
    for fragment in fragments:
        assert ctx.fill(fragment) in message, message
    if case.marker:
        assert not (tmp_path / "MARKER").exists(), "unpickling a file ran its code"
    after = snapshot(tmp_path)
    allowed = {str((ctx.out / name).relative_to(tmp_path)) for name in case.writes}
    new = sorted(set(after) - set(before) - allowed)
    assert not new, f"files written by a failed case: {new}"
    lost = sorted(name for name in before
                  if name not in allowed and after.get(name) != before[name])
    assert not lost, f"earlier files changed or lost: {lost}"
    temps = [name for name in after if re.search(r"(^|/)\.[^/]+\.[^/]*\.tmp$", name)]
    assert not temps, f"temp files left: {temps}"
    if case.check:
        case.check(ctx)
