"""Command line: `python -m dgkd_core {train,train-group,guide-table,evaluate,import,prepare-data,
bench,reproduction,campaign}`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

# Keys of a `train --config` file that say where things are, not how to train.
RUN_FILE_KEYS = ("data", "out_dir", "guides", "guide_tables")

TRAIN_EXAMPLE = ("python -m dgkd_core train --set model=resnet8 --set data=results/data/cifar10.pt "
                 "--set out_dir=runs/resnet8 --set epochs=30 --set logging.tensorboard=true")


def setup_logging(log_file: str | None = None) -> None:
    """Per-epoch lines to stderr (or to `log_file`, e.g. a Snakemake job log)."""
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dgkd_core")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def read_run_file(path: str) -> dict:
    """A `train --config` YAML file: a mapping; ConfigError naming the file otherwise."""
    from dgkd_core import io
    from dgkd_core.schema import ConfigError

    content = io.load_yaml_file(path, "--config")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path} holds a {type(content).__name__}, not a mapping of "
                          "run-config keys (model: ..., epochs: ..., data: ..., out_dir: ...)")
    return content


def guide_list(guides) -> list[str]:
    """`guides` as given in a run file or `--set`: one path, or a list of paths."""
    from dgkd_core.schema import ConfigError

    if guides is None:
        return []
    if isinstance(guides, str):
        return [guides]  # one guide; a string must not be split into characters
    if isinstance(guides, list) and all(isinstance(g, str) and g for g in guides):
        return guides
    raise ConfigError(f"guides must be a path or a list of paths (teacher first), got "
                      f"{guides!r}; e.g. --set 'guides=[teacher/model.pt, ta1/model.pt]'")


def table_list(tables) -> list:
    """`guide_tables` as given in a run file or `--set`: one entry per guide, a table file or
    null (that guide runs inline); none: every guide runs inline."""
    from dgkd_core.schema import ConfigError

    if tables is None:
        return []
    if isinstance(tables, list) and all(t is None or (isinstance(t, str) and t)
                                        for t in tables):
        return tables
    raise ConfigError(f"guide_tables must be a list with one entry per guide (a table file or "
                      f"null), got {tables!r}; e.g. --set 'guide_tables=[t.pt, null]'")


def _train(args) -> int:
    from dgkd_core.config import deep_update, parse_overrides
    from dgkd_core.schema import ConfigError
    from dgkd_core.training.trainer import train

    run = read_run_file(args.config) if args.config else {}
    run = deep_update(run, parse_overrides(args.set or []))
    missing = [k for k in ("data", "out_dir") if not run.get(k)]
    if missing:
        raise ConfigError(f"train needs {' and '.join(missing)}: give them in --config or as "
                          f"--set {missing[0]}=...")
    where = {k: run.pop(k, None) for k in RUN_FILE_KEYS}
    metrics = train(run, where["data"], where["out_dir"], guide_list(where["guides"]),
                    progress=None, guide_tables=table_list(where["guide_tables"]))
    print(json.dumps({k: metrics[k] for k in ("model", "top1_last", "top1_best", "best_epoch",
                                              "wall_time_s")}))
    return 0


def _guide_table(args) -> int:
    from dgkd_core.config import deep_update, parse_overrides
    from dgkd_core.guides.logit_tables import make_guide_table

    run = read_run_file(args.config) if args.config else {}
    run = deep_update(run, parse_overrides(args.set or []))
    for key in RUN_FILE_KEYS:
        run.pop(key, None)
    record = make_guide_table(args.guide, args.data, args.out, run, batch_size=args.batch_size)
    print(json.dumps({k: record[k] for k in ("guide_model", "num_images", "views_per_image",
                                             "num_classes", "dtype", "build_s", "views_per_s")}))
    return 0


def _train_group(args) -> int:
    from dgkd_core.training.fused import train_fused

    specs = []
    for path in args.member:
        run = read_run_file(path)
        missing = [k for k in ("data", "out_dir") if not run.get(k)]
        if missing:
            from dgkd_core.schema import ConfigError

            raise ConfigError(f"--member {path} needs {' and '.join(missing)}")
        where = {k: run.pop(k, None) for k in RUN_FILE_KEYS}
        specs.append({"config": run, "data": where["data"], "out_dir": where["out_dir"],
                      "guides": guide_list(where["guides"]),
                      "guide_tables": table_list(where["guide_tables"])})
    for spec, metrics in zip(specs, train_fused(specs, mechanism=args.mechanism,
                                                   compile=args.compile)):
        print(json.dumps({"out_dir": str(spec["out_dir"]),
                          **{k: metrics[k] for k in ("model", "top1_last", "wall_time_s")}}))
    return 0


def _prepare(args) -> int:
    from dgkd_core.data import prepare_dataset

    resize = args.resize
    meta = prepare_dataset(args.source, args.out, root=args.root, download=args.download,
                           name=args.name, seed=args.seed, resize=resize)
    print(json.dumps({k: meta[k] for k in ("name", "source", "num_classes") if k in meta}))
    return 0


def _bench(args) -> int:
    from dgkd_core.bench.step import main as bench_main

    return bench_main(args)


def _reproduction(args) -> int:
    from dgkd_core.reporting.reproduction import write_from_config

    print(write_from_config(args.config, args.workdir, args.command, args.out, args.commit))
    return 0


def run_config_help() -> str:
    """`train --help`'s list of the run-config keys, read from RUN_CONFIG_SCHEMA: each dotted key
    with its default and what it allows, then an example command."""
    from dgkd_core.config import run_config_key_rows

    rows = run_config_key_rows()
    key_w, default_w = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    indent = " " * (2 + key_w + 2 + default_w + 2)
    lines = ["run-config keys (in --config, or --set KEY=VALUE): key, default, allowed values",
             *(textwrap.fill(a, width=100, initial_indent=f"  {k:<{key_w}}  {d:<{default_w}}  ",
                             subsequent_indent=indent) for k, d, a in rows), "",
             textwrap.fill(f"and where things are: {', '.join(RUN_FILE_KEYS)} (data and out_dir "
                           "are required; guides: teacher first, then TAs, largest first; "
                           "guide_tables: one table file or null per guide, from guide-table)",
                           width=100), "", "example:", f"  {TRAIN_EXAMPLE}"]
    return "\n".join(lines)


def _common_options(in_subcommand: bool) -> argparse.ArgumentParser:
    """--log-file and --debug, accepted before the subcommand and after it. After it they are
    set only where given (SUPPRESS), so they do not undo the same option given before it."""
    common = argparse.ArgumentParser(add_help=False)
    unset = {"default": argparse.SUPPRESS} if in_subcommand else {}
    common.add_argument("--log-file", help="write log lines here instead of stderr", **unset)
    common.add_argument("--debug", action="store_true", **unset,
                        help="on an error, show the whole traceback instead of one line")
    return common


def build_parser() -> argparse.ArgumentParser:
    from dgkd_core.data import DATASET_SOURCES

    from dgkd_core import __version__
    from dgkd_core.method.models import available_models

    parser = argparse.ArgumentParser(prog="python -m dgkd_core", description=__doc__,
                                     parents=[_common_options(False)])
    parser.add_argument("--version", action="version", version=f"dgkd_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_common_options(True)]

    p = sub.add_parser("train", help="train one model (resumes automatically)", parents=common,
                       description=textwrap.fill("models: " + ", ".join(available_models()), 100),
                       epilog=run_config_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML run config (docs/design.md) plus data, out_dir, guides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, dotted for nesting (loss.lam=0.7); repeatable")
    p.set_defaults(func=_train)
    _add_guide_table_parser(sub, common)

    _add_train_group_parser(sub, common)

    p = sub.add_parser("prepare-data", help="turn a dataset into one uint8 tensor file",
                       parents=common)
    p.add_argument("--source", required=True, choices=DATASET_SOURCES,
                   help="the kind of dataset")
    p.add_argument("--out", required=True, help="output file, e.g. results/data/cifar10.pt")
    p.add_argument("--root", help="dataset folder (torchvision CIFAR root or imagefolder root)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    p.add_argument("--name", help="dataset name recorded in the file (default: the source)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--resize", type=int, nargs="+", help="resize imagefolder images to H [W]")
    p.set_defaults(func=_prepare)

    _add_bench_parser(sub, common)

    p = sub.add_parser("reproduction", help="Table 1's reproduction report: paired per-seed "
                       "differences, the paper's claims, provenance (Markdown)", parents=common)
    p.add_argument("--config", action="append", required=True,
                   help="workflow config; repeat for overlays (merged in order, as Snakemake's)")
    p.add_argument("--workdir", default=".", help="the workflow's directory, holding results/")
    p.add_argument("--command", required=True, help="the exact command that made the runs")
    p.add_argument("--out", default="docs/reproduction.md",
                   help="the Markdown report (default: %(default)s)")
    p.add_argument("--commit", help="the code's commit, where this tree is no git checkout")
    p.set_defaults(func=_reproduction)

    from dgkd_core.campaign.cli import add_campaign_parser
    from dgkd_core.experiment.checkpoint_cli import add_evaluate_parser, add_import_parser

    add_evaluate_parser(sub, common)
    add_import_parser(sub, common)
    add_campaign_parser(sub, common)
    return parser


def _add_train_group_parser(sub, common) -> None:
    p = sub.add_parser("train-group", parents=common,
                       help="train several models together, as one fused group (resumes "
                       "automatically; each member writes its own outputs)")
    p.add_argument("--member", action="append", required=True, metavar="RUN_FILE",
                   help="a member's run file, as `train --config` takes it (data, out_dir, "
                   "guides and run-config keys); repeat for each member")
    p.add_argument("--mechanism", default="auto",  # checked by dgkd_core.training.fused
                   help="auto, cuda_streams, sequential or horizontal (members of one architecture "
                   "stacked into one model); auto: per device kind, as measured "
                   "(dgkd_core/training/fuse_choice.py; default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="horizontal only: torch.compile the stacked step (opt-in: its first "
                   "steps compile; bit-identical resume not yet proven with it)")
    p.set_defaults(func=_train_group)


def _add_bench_parser(sub, common) -> None:
    p = sub.add_parser("bench", help="speed benchmark: project trainer vs the released loop",
                       parents=common)
    p.add_argument("--out", default="results/benchmarks/step.json",
                   help="the JSON result (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per workload")
    p.add_argument("--repeat", type=int, default=None,
                   help="time each loop this many times and report the median (default: 1; "
                   "3 with --fused)")
    p.add_argument("--skip-workflow", action="store_true", help="skip the demo workflow timing")
    p.add_argument("--train-images", type=int, default=None,
                   help="size of the synthetic training set the loops read (default: CIFAR's "
                   "50000; with --fused 10000 on CUDA, on a CPU what the timed rounds need)")
    p.add_argument("--fused", action="store_true",
                   help="instead: the fused-training workloads (K models as one group against "
                   "K solo runs; writes fused.json next to --out)")
    p.add_argument("--k", default="1,3,5,15",
                   help="--fused: the resnet8 student group sizes (default: %(default)s)")
    p.add_argument("--teachers", type=int, default=3,
                   help="--fused: the resnet26 teacher group size; 0 skips it (default: "
                   "%(default)s)")
    p.add_argument("--mechanisms", default=None,
                   help="--fused: which of solo, sequential, cuda_streams, horizontal, "
                   "horizontal_eager, horizontal_compile, in this order (default: all)")
    p.add_argument("--parity", action="store_true",
                   help="instead: accuracy of the fast path vs plain fp32 eager over 3 seeds")
    p.add_argument("--parity-data", help="prepared data file for --parity (default: synthetic)")
    p.add_argument("--parity-model", default="resnet8",
                   help="the model --parity trains (default: %(default)s)")
    p.add_argument("--parity-epochs", type=int, default=5,
                   help="epochs of each --parity run (default: %(default)s)")
    p.add_argument("--stream", action="store_true",
                   help="instead: images/s of the ImageNet stream path, PIL vs decode_jpeg "
                        "(vs GPU decode_jpeg on CUDA); written next to --out as stream.json")
    p.add_argument("--stream-folder", help="an ImageNet-style folder for --stream (default: "
                   "128 generated 500x375 JPEGs)")
    p.set_defaults(func=_bench)


def _add_guide_table_parser(sub, common) -> None:
    p = sub.add_parser("guide-table", parents=common,
                       help="a guide's logits for every crop-and-flip view of the training set, "
                            "for train's guide_tables")
    p.add_argument("--guide", required=True, help="the guide's model.pt")
    p.add_argument("--data", required=True, help="prepared data file (prepare-data's output)")
    p.add_argument("--out", required=True, help="the table file to write")
    p.add_argument("--config", help="YAML run config of the runs it serves (device, fast.*, "
                                    "normalize); default: the defaults")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run-config key, as for train; repeatable")
    p.add_argument("--batch-size", type=int, default=None,
                   help="views per forward pass (default: 8192 on CUDA, else the config's "
                        "eval_batch_size)")
    p.set_defaults(func=_guide_table)


def error_line(err: BaseException) -> str:
    """One line for the user: the message's first line; the type where it adds something."""
    from dgkd_core.errors import DgkdError

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (DgkdError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. An error is one line on stderr and exit status 2 (the traceback with
    --debug); a training stopped early to be resumed exits with its own status (75)."""
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_file)
    except OSError as err:  # before any work: nothing to lose
        print(f"error: cannot write --log-file {args.log_file}: {err.strerror or err}; create "
              "its folder or give another file", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as err:  # every failure becomes one line; --debug shows where it came from
        if args.debug:
            raise
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
