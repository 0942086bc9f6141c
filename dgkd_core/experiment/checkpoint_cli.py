"""The checkpoint commands: `python -m dgkd_core evaluate` and `import`.

`import` checks a checkpoint trained elsewhere without a workflow config:

    python -m dgkd_core import --checkpoint resnet56_last.pth --model resnet56 \\
        --data results/data/cifar100.pt --out imported/resnet56

writes what the workflow's import job writes (dgkd_core.experiment.importing.import_model):
DIR/model.pt, which `train --set guides=DIR/model.pt`, `evaluate` and a workflow's
`teacher_checkpoint` accept, DIR/metrics.json and DIR/history.csv; it prints the test accuracy.
`evaluate` prints the test accuracy of a model.pt or, given --model, of any file import takes.
"""

from __future__ import annotations

import json

__all__ = ["add_evaluate_parser", "add_import_parser", "evaluate_any", "run_config_for"]


def run_config_for(model: str, device: str, overrides: list[str] | None) -> dict:
    """The run config an import is evaluated with: `model` as a nokd run of seed 0 on `device`,
    with `--set` overrides (normalize, eval_batch_size, fast.*)."""
    from dgkd_core.config import deep_update, parse_overrides, resolve_run_config

    run = {"model": model, "method": "nokd", "seed": 0, "device": device}
    return resolve_run_config(deep_update(run, parse_overrides(overrides or [])))


def evaluate_any(checkpoint: str, data: str, model: str | None, device: str) -> dict:
    """`evaluate`'s result for this project's model.pt or, given `model`, for any checkpoint
    import accepts (evaluated as import evaluates it, nothing written)."""
    from dgkd_core.errors import TrainingError
    from dgkd_core.experiment.importing import tested_import
    from dgkd_core.training.evaluate import evaluate_checkpoint

    if model is None:
        try:
            return evaluate_checkpoint(checkpoint, data, device=device)
        except TrainingError as err:  # load_checkpoint's refusal of a readable foreign file
            if not str(err).endswith("is not a dgkd_core model checkpoint"):
                raise
            raise TrainingError(f"{err}; for a checkpoint from elsewhere give --model NAME, "
                                "the registry model it holds") from None
    _, _, about, test, _ = tested_import(checkpoint, data, run_config_for(model, device, None),
                                         str(checkpoint))
    return {**test, "checkpoint": str(checkpoint), "data": str(data), "layout": about["layout"]}


def _evaluate(args) -> int:
    print(json.dumps(evaluate_any(args.checkpoint, args.data, args.model, args.device)))
    return 0


def _import(args) -> int:
    from pathlib import Path

    from dgkd_core.experiment.importing import import_model

    metrics = import_model(args.checkpoint, args.data, args.out,
                           cfg=run_config_for(args.model, args.device, args.set))
    print(json.dumps({"model": metrics["model"], "top1": metrics["top1_last"],
                      "top5": metrics["top5_last"], "test_images": metrics["test_images"],
                      "layout": metrics["source_layout"],
                      "model_pt": str(Path(args.out) / "model.pt")}))
    return 0


def add_import_parser(sub, common) -> None:
    p = sub.add_parser("import", parents=common,
                       help="a checkpoint trained elsewhere (RepDistiller, mdistiller, "
                            "torchvision, a state_dict) as a model.pt, with its test accuracy")
    p.add_argument("--checkpoint", required=True, help="the file to import (read as tensors "
                   "only: torch.load(weights_only=True))")
    p.add_argument("--model", required=True, help="the registry model it holds, e.g. resnet56")
    p.add_argument("--data", required=True, help="prepared data file (prepare-data's output)")
    p.add_argument("--out", required=True, help="folder for model.pt, metrics.json, history.csv")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="run-config override for the evaluation, e.g. "
                        "'normalize={mean: [0.507, 0.487, 0.441], std: [0.267, 0.256, 0.276]}'")
    p.set_defaults(func=_import)


def add_evaluate_parser(sub, common) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 of a checkpoint on a prepared test split",
                       parents=common)
    p.add_argument("--checkpoint", required=True,
                   help="a model.pt written by train or import; with --model, any file import takes")
    p.add_argument("--model", help="the registry model a checkpoint from elsewhere holds")
    p.add_argument("--data", required=True, help="prepared data file (prepare-data's output)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda where there is one, else cpu), cpu or cuda (default: auto)")
    p.set_defaults(func=_evaluate)
