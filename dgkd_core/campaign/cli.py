"""`python -m dgkd_core campaign {restore,pack,unpack,report,targets,fuse-choice}` (dgkd_core/campaign/state.py).

The configs of a command: its --config files, else the campaign's own (CAMPAIGNS), the campaign
being --campaign or the state folder's name."""

from __future__ import annotations

from pathlib import Path


def _configs(args) -> list[str]:
    from dgkd_core.campaign.state import CampaignError, campaign_configs

    if args.config:
        return args.config
    name = _campaign_name(args)
    if name is None:
        raise CampaignError("give --config (repeatable) or --campaign NAME")
    return campaign_configs(name)


def _campaign_name(args) -> str | None:
    if getattr(args, "campaign", None):
        return args.campaign
    state = getattr(args, "state", None)
    return Path(state).resolve().name if state else None


def _restore(args) -> int:
    from dgkd_core.campaign.state import load_plan, restore

    result = restore(args.state, args.workdir, load_plan(_configs(args)))
    for key, why in result.refused.items():
        print(f"not restored (retrained): {key}: {why}")
    for path in result.kept:
        print(f"kept the work directory's own {path} (differs from the state's)")
    print(result.summary())
    return 0


def _pack(args) -> int:
    from dgkd_core.campaign.pack import pack, progress_line
    from dgkd_core.campaign.state import CampaignError, load_plan

    name = _campaign_name(args)
    if name is None:
        raise CampaignError("pack needs the campaign's name: give --campaign NAME or --state")
    configs = _configs(args)
    plan = load_plan(configs)
    manifest = pack(args.workdir, plan, args.out, campaign=name, configs=configs,
                    state_dir=args.state, window_s=args.window_seconds,
                    window_training=args.window_training)
    for key, why in manifest["dropped"].items():
        print(f"left out: {key}: {why}")
    print(f"campaign {name}: {progress_line(manifest, len(plan.runs()))}; state -> {args.out}")
    return 0


def _unpack(args) -> int:
    from dgkd_core.campaign.pack import unpack

    manifest = unpack(args.archive, args.state)
    print(f"{args.state}: {len(manifest['runs'])} runs from {args.archive}")
    return 0


def _report(args) -> int:
    from dgkd_core.campaign.report import write_report

    print(write_report(args.state, _configs(args), args.out, args.readme))
    return 0


def _targets(args) -> int:
    from dgkd_core.campaign.state import critical_path_targets, data_targets, load_plan

    if args.what == "configs":
        print("\n".join(_configs(args)))
        return 0
    plan = load_plan(_configs(args))
    print("\n".join(data_targets(plan) if args.what == "data" else critical_path_targets(plan)))
    return 0


def _fuse_choice(args) -> int:
    """Write the window's fuse overlay (or remove a stale one) and print the decision."""
    import json

    from dgkd_core import io
    from dgkd_core.training.fuse_choice import WindowFuse, window_fuse_choice

    out = Path(args.out)
    try:
        workloads = json.loads(Path(args.fused).read_text())["workloads"]
        decision = window_fuse_choice(workloads)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        decision = WindowFuse(None, f"no figures in {args.fused} ({type(err).__name__})")
    choice, reason = decision.mechanism, decision.reason
    if choice is None:
        out.unlink(missing_ok=True)
        print(f"fuse: off, every run its own job ({reason})")
        return 0
    io.atomic_write_text(f"# this window's fused training, measured by bench --fused: {reason}\n"
                         f"fuse: true\nfuse_mechanism: {choice}\n", out)
    print(f"fuse: {choice} ({reason}) -> {out}")
    return 0


def add_campaign_parser(sub, common) -> None:
    """The `campaign` subcommand and its own subcommands."""
    p = sub.add_parser("campaign", parents=common, help="a reproduction campaign built up "
                       "across short GPU windows: restore, pack, unpack, report")
    csub = p.add_subparsers(dest="campaign_command", required=True)

    def add(name, func, help_text, *, state_required=True):
        q = csub.add_parser(name, parents=common, help=help_text)
        q.add_argument("--state", required=state_required,
                       help="the campaign's state folder, docs/reproduction/<campaign>")
        q.add_argument("--config", action="append",
                       help="workflow config, repeatable (merged in order); default: the "
                       "campaign's own (dgkd_core.campaign.state.CAMPAIGNS)")
        q.add_argument("--campaign", help="the campaign's name (default: the state folder's)")
        q.set_defaults(func=func)
        return q

    q = add("restore", _restore, "copy the state's runs into a work directory (after the data "
            "is prepared): finished runs and resume states whose config is the plan's")
    q.add_argument("--workdir", required=True, help="Snakemake's --directory")
    q = add("pack", _pack, "collect the state from a work directory into one tar.xz",
            state_required=False)
    q.add_argument("--workdir", required=True, help="Snakemake's --directory")
    q.add_argument("--out", required=True, help="the archive to write (.tar.xz)")
    q.add_argument("--window-seconds", type=float, help="this GPU window's seconds (manifest)")
    q.add_argument("--window-training", help="how this window trained (manifest), e.g. "
                   "fuse-choice's line")
    q = csub.add_parser("unpack", parents=common,
                        help="verify a packed state and swap it in for the state folder")
    q.add_argument("archive", help="pack's .tar.xz")
    q.add_argument("--state", required=True, help="docs/reproduction/<campaign>")
    q.set_defaults(func=_unpack)
    q = add("report", _report, "the campaign's report (Markdown) from its state")
    q.add_argument("--out", default="docs/reproduction.md", help="default: %(default)s")
    q.add_argument("--readme", help="also rewrite the generated box in this README.md")
    q = add("targets", _targets, "print the data files, the critical path's model.pt files "
            "(for --prioritize) or the configs, one a line", state_required=False)
    q.add_argument("what", choices=["data", "prioritize", "configs"])
    q = csub.add_parser("fuse-choice", parents=common, help="from a window's `bench --fused` "
                        "figures, the workflow overlay that fuses this window's runs where the "
                        "fused students measured a clear win (training.fuse_choice), else none")
    q.add_argument("--fused", required=True, help="bench --fused's fused.json")
    q.add_argument("--out", required=True, help="the overlay to write (removed when not fusing)")
    q.set_defaults(func=_fuse_choice)
