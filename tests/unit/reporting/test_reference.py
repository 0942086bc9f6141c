"""Published values (dgkd_core.reporting.reference): each with its source and protocol, and no
row of a chain mixes two experiments (issue #23)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dgkd_core.experiment.plan import Plan
from dgkd_core.reporting import reference
from dgkd_core.reporting.reference import (ANY_TAS, PROTOCOLS, TAKD_RESNET26, TAKD_SEARCH,
                                           chain_protocol, paper_value, published_for_rows)

REPO = Path(__file__).resolve().parents[3]
RESNET_CHAIN = ("resnet26", "resnet20", "resnet14", "resnet8")


def chain_rows(dataset, chain, keep_prob=0.75):
    """Table 1's rows of one chain: NoKD, KD, TAKD, DGKD, stochastic DGKD."""
    return [(dataset, "nokd", chain[-1:], None), (dataset, "kd", (chain[0], chain[-1]), None),
            (dataset, "takd", chain, None), (dataset, "dgkd", chain, None),
            (dataset, "sdgkd", chain, keep_prob)]


def test_every_value_has_a_source_and_a_protocol_with_its_epochs_and_selection():
    for key, value in reference.all_values():
        assert value.source in (reference.DGKD, reference.TAKD), key
        assert value.protocol in PROTOCOLS, key
        assert value.protocol.selection and value.protocol.teacher, key
        assert value.protocol.name in value.recipe or value.protocol.describe() in value.recipe
    assert TAKD_RESNET26.epochs == 80 and TAKD_SEARCH.epochs == 150
    assert "120 search trials" in TAKD_SEARCH.selection


def test_the_takd_papers_primary_tables():
    r8, r14 = ["resnet26", "resnet8"], ["resnet26", "resnet14"]
    assert paper_value("cifar10", "nokd", ["resnet14"]).top1 == 89.11
    assert paper_value("cifar10", "kd", r8).top1 == 86.66
    assert paper_value("cifar10", "takd", ["resnet26", "resnet20", "resnet14"]).top1 == 91.23
    assert paper_value("cifar10", "kd", r14).top1 == 89.75
    values = dict(reference.all_values())
    assert values["cifar10", "mutual", "resnet26", (), "resnet8", None].top1 == 87.71
    assert values["cifar10", "bss", "resnet26", (), "resnet14", None].top1 == 90.34
    # Table 1 (150 epochs): plain T10 -> TA4 -> S2, ResNet T110 -> TA20 -> S8.
    plain = ["plane10", "plane4", "plane2"]
    assert [paper_value("cifar10", m, lin).top1 for m, lin in
            (("nokd", ["plane2"]), ("kd", ["plane10", "plane2"]), ("takd", plain))] == \
        [70.16, 72.57, 73.51]
    assert paper_value("cifar100", "takd", plain).top1 == 44.92
    assert paper_value("cifar10", "kd", ["resnet110", "resnet8"]).top1 == 88.65
    assert paper_value("cifar100", "takd", ["resnet110", "resnet20", "resnet8"]).top1 == 61.82
    # Tables 2 and 3: the TA-size sweeps.
    assert paper_value("cifar10", "takd", ["plane10", "plane6", "plane2"]).top1 == 73.15
    assert paper_value("cifar100", "takd", ["resnet110", "resnet56", "resnet8"]).top1 == 61.47


def test_dgkds_resnet_values_are_likely_of_the_80_epoch_table():
    dgkd = paper_value("cifar10", "dgkd", RESNET_CHAIN)
    assert dgkd.top1 == 89.02 and dgkd.likely and dgkd.protocol is TAKD_RESNET26
    assert "likely" in dgkd.recipe
    assert chain_protocol("cifar10", RESNET_CHAIN) is TAKD_RESNET26


def test_no_row_mixes_protocols():
    """The rows of every chain of every shipped config, and of every published chain, take
    values of one experiment only; for NoKD of resnet8 on CIFAR-10 that is 86.02 (80 epochs)
    beside TAKD's 88.01, never 88.52 (150 epochs)."""
    chains = set()
    for path in sorted((REPO / "config").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if path.name == "schema.yaml" or not isinstance(config.get("chains"), dict):
            continue
        for dataset in config.get("datasets", {}):
            for chain in config["chains"].values():
                chains.add((dataset, (chain["teacher"], *chain.get("tas", []), chain["student"])))
    for (dataset, method, teacher, tas, student, _), _ in reference.all_values():
        if method in ("takd", "dgkd") and tas is not ANY_TAS:
            chains.add((dataset, (teacher, *tas, student)))
    for dataset, chain in sorted(chains):
        values = [v for v in published_for_rows(chain_rows(dataset, chain)) if v is not None]
        assert len({v.protocol for v in values}) <= 1, (dataset, chain)
        if values:
            assert values[0].protocol is chain_protocol(dataset, chain)
    row = dict(zip(("nokd", "kd", "takd", "dgkd", "sdgkd"),
                   published_for_rows(chain_rows("cifar10", RESNET_CHAIN))))
    assert [row[m].top1 for m in row] == [86.02, 86.66, 88.01, 89.02, 89.66]
    # CIFAR-100 with the resnet26 chain is no published experiment: no value in any row, not
    # the 150-epoch NoKD of resnet8 (61.37).
    assert published_for_rows(chain_rows("cifar100", RESNET_CHAIN)) == [None] * 5


def test_alone_a_value_shows_only_where_one_experiment_published_it():
    assert paper_value("cifar10", "nokd", ["resnet8"]) is None  # 86.02 (80 ep.) and 88.52 (150)
    assert paper_value("cifar10", "nokd", ["resnet8"], protocol=TAKD_SEARCH).top1 == 88.52
    assert published_for_rows([("cifar10", "nokd", ["resnet8"], None)]) == [None]


def test_the_dgkd_plain_chain_takes_no_kd_value_from_takds_table_1():
    plain = ("plane10", "plane8", "plane6", "plane4", "plane2")
    row = published_for_rows(chain_rows("cifar100", plain))
    assert row[0] is None and row[1] is None  # 41.09 and 44.57 are TAKD's 150-epoch Table 1
    assert [v.top1 for v in row[2:]] == [45.14, 48.92, 50.15]


def test_the_plan_of_the_default_config_builds():
    """The shipped config's chains exist in the plan (the test above reads them from YAML)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert Plan(config).runs()
