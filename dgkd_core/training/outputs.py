"""A finished run's outputs: `model.pt`, `history.csv` and `metrics.json`, each written
atomically, and what metrics.json records (`TrainerOutputs`, a base of the Trainer)."""

from __future__ import annotations

import logging
import time

from dgkd_core import io
from dgkd_core.config import config_hash
from dgkd_core.guides.checkpoints import save_checkpoint
from dgkd_core.runtime import environment_info
from dgkd_core.training.history import history_csv

log = logging.getLogger("dgkd_core.training.trainer")


class TrainerOutputs:
    """The outputs of a `Trainer` (dgkd_core.training.trainer) once its epochs are done."""

    def finish(self, remove_resume_state: bool = True) -> dict:
        """Write model.pt, history.csv and metrics.json (each atomically), remove the resume
        state (a fused group removes its members' once all have finished) and return
        metrics.json's content."""
        cfg, out_dir = self.cfg, self.out_dir
        self._check_finite_model()
        metrics = self._metrics()
        if self.dist.is_main:  # the ranks hold the same model: one writes the outputs
            out_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(out_dir / "model.pt", self.model, cfg, self.meta,
                            {"method": cfg["method"], "guides": self.guide_paths,
                             "top1_last": metrics["top1_last"]})
            io.atomic_write_text(history_csv(self.state.history), out_dir / "history.csv")
            io.atomic_write_json(metrics, out_dir / "metrics.json")
            if self.tensorboard is not None:  # its HParams: the settings beside the curves
                self.tensorboard.write_hparams(cfg)
            if self.wandb is not None:
                self.wandb.write_summary(metrics)
            if remove_resume_state:
                self.resume_path.unlink(missing_ok=True)
        self.dist.barrier()
        log.info("done: %s top-1 %.2f (last epoch), best %.2f at epoch %d",
                 cfg["model"], metrics["top1_last"], metrics["top1_best"], metrics["best_epoch"])
        return metrics

    def _metrics(self) -> dict:
        cfg, meta, device, history = self.cfg, self.meta, self.device, self.state.history
        best = max(history, key=lambda h: h["test_top1"])
        last = history[-1]
        total_images = sum(h["img_s"] * h["time_s"] for h in history)
        total_train_s = sum(h["time_s"] for h in history)
        return {
            "model": cfg["model"],
            "method": cfg["method"],
            "seed": cfg["seed"],
            "dataset": meta["name"],
            "num_classes": int(meta["num_classes"]),
            "guides": self.guide_paths,
            # Per guide: looked up from its table (dgkd_core.guides.logit_tables), or run inline.
            "guide_tables": [t is not None for t in self.table_paths],
            "epochs": cfg["epochs"],
            "top1_last": last["test_top1"],
            "top5_last": last["test_top5"],
            # The test set is not a validation set: the best epoch is reported, labelled, never
            # used to pick the model. The saved model is the last epoch's.
            "top1_best": best["test_top1"],
            "top5_best": best["test_top5"],
            "best_epoch": best["epoch"],
            "reported": "last epoch (top1_last); best-epoch values are for reference only",
            **_validation_metrics(history),
            "wall_time_s": time.time() - self.wall_start,
            "train_time_s": total_train_s,
            "img_per_s": total_images / max(total_train_s, 1e-9),
            "resumed": bool(self.state.previous_stop),
            "config": cfg,
            "config_hash": config_hash(cfg),
            "determinism": {"deterministic": cfg["deterministic"], "fast": self.fast,
                            # why the CUDA graph was given up for the eager step, if it was
                            "cuda_graph_fallback": getattr(self.step_fn, "disabled_reason", None),
                            # CPU: always. CUDA: with `deterministic`, checked on an H200 (the
                            # resume and same-seed tests of tests/unit/training/test_trainer.py, 2026-11-28).
                            "bit_identical_resume": device.type == "cpu" or cfg["deterministic"]},
            "versions": environment_info(device),
            "device": str(device),
            "data_checksum": meta.get("checksum"),
            # trained in one process with other models (dgkd_core.training.fused): with whom, and how
            **({"fused_group": self.fused_group} if self.fused_group is not None else {}),
            **self.dist.identity(),
        }


def _validation_metrics(history: list[dict]) -> dict:
    """Where the run held out a validation split: its last and best top-1, the best-validation
    epoch (the first of equals) and the test top-1 there, beside the last epoch's. {} otherwise."""
    if "val_top1" not in history[-1]:
        return {}
    best = max(history, key=lambda h: h["val_top1"])
    return {"val_top1_last": history[-1]["val_top1"], "val_top1_best": best["val_top1"],
            "best_val_epoch": best["epoch"], "top1_at_best_val": best["test_top1"]}
