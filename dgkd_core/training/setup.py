"""How a Trainer gets ready (`TrainerSetup.setup`): device, data, guides, student, loaders,
optimizer, the resume state it goes on from, and its step function; and the lr schedule
(`lr_at`), which the optimizer starts from and each epoch sets."""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch
import torch.nn as nn

from dgkd_core.config import config_hash
from dgkd_core.data import CROP_PAD, load_prepared, make_loaders
from dgkd_core.data.validation import hold_out
from dgkd_core.errors import TrainingError
from dgkd_core.guides.checkpoints import check_writable_dir, file_fingerprint, load_guide
from dgkd_core.guides.prepared import prepare_guide
from dgkd_core.guides.logit_tables import GuideTable, load_guide_table
from dgkd_core.method.models import build_model
from dgkd_core.runtime import fast_settings, make_autocast, pick_device, seed_everything
from dgkd_core.schema import ConfigError
from dgkd_core.training.distiller import Distiller
from dgkd_core.training.folder_lock import RunFolderLock, lock_run_folder
from dgkd_core.training.resume import read_resume_state, restore_resume_state
from dgkd_core.training.step import make_step
from dgkd_core.training.tensorboard_log import open_writer
from dgkd_core.training.wandb_log import open_run

log = logging.getLogger("dgkd_core.training.trainer")


def lr_at(cfg: dict, epoch: int) -> float:
    """Learning rate for a 0-based epoch; a pure function, so resuming needs no scheduler state."""
    base, sched, epochs = cfg["optimizer"]["lr"], cfg["schedule"], cfg["epochs"]
    if sched["name"] == "constant":
        return base
    if sched["name"] == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    passed = sum(epoch >= round(m * epochs) for m in sched["milestones"])
    return base * sched["gamma"] ** passed


class TrainerSetup:
    """The setup of a `Trainer` (dgkd_core.training.trainer), which sets what it reads first:
    cfg, data_path, out_dir, guide_paths, table_paths, dist, resume_path, state, prepared."""

    folder_lock: RunFolderLock | None = None  # held from setup() to release_folder()

    def setup(self) -> None:
        """Device, data, guides, student, loaders, optimizer, resume state and step function.

        The order is fixed: building the guides and then the student draws from the seeded RNG."""
        cfg = self.cfg
        self.wall_start = time.time()
        check_writable_dir(self.out_dir)
        self.device = self.dist.start(pick_device(cfg))  # this rank's device
        # Before the resume state is read: a second run must not take a live run's state.
        self.folder_lock = lock_run_folder(self.out_dir, self.dist)
        self.fast = self.dist.restrict_fast(fast_settings(cfg, self.device))
        seed_everything(cfg["seed"], cfg["deterministic"])
        # A fused group (dgkd_core.training.fused) hands its members one loaded copy of shared data.
        self.data = self.prepared if self.prepared is not None else load_prepared(self.data_path)
        self.meta = self.data.meta
        self._build_models()
        self.model = self.dist.wrap_student(self.distiller, cfg["sync_bn"])  # DDP, several ranks
        self._build_loaders_and_optimizer()
        # Tables give the inline logits to rounding: a resume state holds to the one it began with.
        self.identity = {"config_hash": config_hash(cfg),
                         "guides": [file_fingerprint(p) for p in self.guide_paths],
                         "data_checksum": self.meta.get("checksum"),
                         "guide_tables": [t is not None for t in self.table_paths],
                         **self.dist.identity()}
        self._resume()
        self.term_names = self.distiller.term_names
        self.total_index = self.term_names.index("total")
        self.step_fn = make_step(self.distiller, self.optimizer, make_autocast(self.fast),
                                 self.fast["cuda_graph"], self.device, self.term_names)
        # Resumed: the same folder, dropping what an interrupted attempt logged from here on.
        if self.dist.is_main:
            self.tensorboard = open_writer(cfg["logging"], self.out_dir, self.state.epoch + 1)
            self.wandb = open_run(cfg["logging"], self.out_dir, cfg)

    def release_folder(self) -> None:
        """Let another run use out_dir (at the run's end, however it ends)."""
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None

    def _build_models(self) -> None:
        """The guides (tables, or prepared modules), then the student, then the Distiller."""
        fast, device = self.fast, self.device
        memory_format = torch.channels_last if fast["channels_last"] else torch.contiguous_format
        guides = [self._load_guide(path, table) for path, table
                  in zip(self.guide_paths, self.table_paths)]
        model = build_model(self.cfg["model"], self.data.num_classes, dataset=self.meta["name"],
                            init=self.cfg["init"])
        self.model = model.to(device).to(memory_format=memory_format)
        self.distiller = Distiller(self.model, guides, self.cfg["loss"])

    def _load_guide(self, path: str, table: str | None) -> nn.Module | GuideTable:
        """Guide `path` as the step uses it: its table (`table`), or the checkpoint's model,
        prepared (folded, channels_last, bf16 on the CUDA fast path)."""
        fast, cfg = self.fast, self.cfg
        # Built (and checked) even where its table stands in for it: building it draws from
        # the seeded RNG, and the student's initialisation must not depend on the tables.
        guide = load_guide(path, self.meta, self.device)
        if table is not None:
            if not cfg["augment"] or self.data.is_stream:
                raise ConfigError("guide tables hold the views of the cached data's crop and "
                                  "flip; this run has augment: false or streamed data, so run "
                                  "it without guide tables (guide_tables: false)")
            normalization = cfg["normalize"] or {"mean": self.data.mean, "std": self.data.std}
            # One placed copy per table for every run holding this data (a fused group's
            # members): the same file, checked against the same guide and settings.
            key = ("guide_table", os.path.realpath(table), os.path.realpath(path),
                   json.dumps(normalization, sort_keys=True), str(self.device))
            if key not in self.data.device_copies:
                self.data.device_copies[key] = load_guide_table(
                    table, guide_checkpoint=path, data_meta=self.meta,
                    normalization=normalization, pad=CROP_PAD, device=self.device)
            return self.data.device_copies[key]
        return prepare_guide(guide, fold=fast["fold_guides"], channels_last=fast["channels_last"],
                             dtype=torch.bfloat16 if fast["bf16"] else torch.float32)

    def _build_loaders_and_optimizer(self) -> None:
        cfg, device = self.cfg, self.device
        common = dict(batch_size=cfg["batch_size"], eval_batch_size=cfg["eval_batch_size"],
                      device=device, seed=cfg["seed"], augment=cfg["augment"],
                      channels_last=self.fast["channels_last"], normalization=cfg["normalize"],
                      shard=self.dist.shard, num_workers=cfg["data_workers"])
        data, self.val_loader = self._validation_split(common)
        self.train_loader, self.test_loader = make_loaders(
            data, with_views=any(t is not None for t in self.table_paths), **common)
        if len(self.train_loader) == 0:
            raise TrainingError(f"batch_size {cfg['batch_size']} is larger than the training set "
                                f"({len(self.data.train_labels)} images); lower batch_size")
        opt = cfg["optimizer"]
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=lr_at(cfg, 0), momentum=opt["momentum"],
            weight_decay=opt["weight_decay"], nesterov=opt["nesterov"],
            **({"fused": True} if device.type == "cuda" else {"foreach": True}),
        )

    def _validation_split(self, common: dict):
        """(training data, validation loader or None): `validation_images` held out of the
        training split (dgkd_core.data.validation), the same on every attempt of the run."""
        n = self.cfg["validation_images"]
        if not n:
            return self.data, None
        if any(t is not None for t in self.table_paths):
            raise ConfigError("guide tables are indexed by the whole training split; this run "
                              f"holds out validation_images {n}: set guide_tables: false")
        data, val = hold_out(self.data, n, self.cfg["seed"])
        return data, make_loaders(val, **common)[1]

    def _resume(self) -> None:
        s = self.state
        payload = read_resume_state(self.resume_path, self.identity, self.model,
                                    self.optimizer)
        if payload is not None:
            s.previous_stop = restore_resume_state(payload, s, self.model, self.optimizer,
                                                   self.train_loader)
            self.good_resume_state = True
            log.info("resumed from %s at epoch %d step %d (the previous attempt stopped: %s)",
                     self.resume_path, s.epoch + 1, s.step, s.previous_stop)
        s.epoch_times = [h["time_s"] for h in s.history]
