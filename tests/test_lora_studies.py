"""The rank_collapse and lora_fair studies: design cells, spaces, plans of every profile, their
reports, and a real launch + report of each (slow)."""
from __future__ import annotations

import math
import re

import optuna
import pytest

from fedcore.resolve import make_config
from sweeps.launch import main
from sweeps.report_lora import lora_fair_rows, lora_fair_table, rank_collapse_rows
from tests.conftest import image_folders, launch_and_report, study_configs, study_plan


_configs = study_configs


@pytest.mark.parametrize("profile, rank_profiles, alphas", [
    ("paper", ("homogeneous", "uniform", "heavy_tail_light", "heavy_tail_strong"), (0.1, 0.5, 1.0)),
    ("local", ("heavy_tail_light",), (0.1,)),   # sized for 2 cores: the profile where collapse costs most
])
def test_rank_collapse_cells_cover_methods_by_rank_profile_by_alpha(profile, rank_profiles, alphas):
    got = {(c["aggregation"], c["rank_profile"], c["alpha"]) for c, _, _ in _configs("rank_collapse", profile)}
    assert got == {(m, rp, a) for m in ("fedit", "hetlora", "flexlora", "flora", "raflora")
                   for rp in rank_profiles for a in alphas}
    for cell, space, cfg in _configs("rank_collapse", profile):
        assert cfg.method.name == cell["aggregation"] and cfg.model.lora.rank_profile == cell["rank_profile"]
        assert cfg.partition.alpha == cell["alpha"]
        assert cfg.model.lora.heterogeneous == (cell["rank_profile"] != "homogeneous")
        assert ("method.params.prune_lambda" in space) == (cell["aggregation"] == "hetlora")


def test_lora_fair_space_tunes_lambda_log_uniform_and_server_steps_only_for_lora_fair():
    cells = list(_configs("lora_fair", "smoke"))
    assert {c["aggregation"] for c, _, _ in cells} == {"fedit", "ffa_lora", "flora", "flexlora", "lora_fair"}
    for cell, space, cfg in cells:
        if cell["aggregation"] == "lora_fair":
            lam = space["method.params.lambda"]
            assert (lam.low, lam.high, lam.log) == (1e-4, 1.0, True)
            assert isinstance(space["method.params.server_steps"], optuna.distributions.IntDistribution)
            assert cfg.method.params["lambda"] == 1e-4
        else:
            assert not any(k.startswith("method.params") for k in space)
    # rank heterogeneity as a parameter of any space: every choice is a valid config
    for choice in ("uniform", "heavy_tail_light", "heavy_tail_strong"):
        # (with a method that rescales across ranks: the config refuses mixed ranks for the others)
        cfg = make_config({"model": {"name": "minilm-l6"}, "method": {"name": "fedit"}},
                          **{"model.lora.rank_profile": choice})
        assert cfg.model.lora.heterogeneous


def _domain_folders(root, domains=("clipart", "real")):
    # enough images for Table 2's 30 clients (5 per domain, Dirichlet inside it) at the probe seed
    return image_folders(root, ("cat", "dog", "owl"), 40, domains)


# the paper text's two protocols ("Datasets", "Training Details"; docs/methods.md "LoRA-FAIR"):
# partition -> (clients, per round, local iterations)
PAPER = {"domain": (6, 6, 2), "domain_dirichlet": (30, 18, 5)}


def test_lora_fair_paper_profile_runs_each_setting_as_the_paper_does(tmp_path, capsys):
    _domain_folders(tmp_path)
    cells = list(_configs("lora_fair", "paper", data_dir=str(tmp_path)))
    assert {(c["partition"], c["aggregation"], c["table"], c["dataset"]) for c, _, _ in cells} == {
        (p, m, t, "domainnet") for p, t in (("domain", 1), ("domain_dirichlet", 2))
        for m in ("fedit", "ffa_lora", "flora", "flexlora", "lora_fair")}
    for cell, space, cfg in cells:
        clients, per_round, steps = PAPER[cell["partition"]]
        assert (cfg.partition.kind, cfg.partition.num_clients, cfg.clients_per_round) == (
            cell["partition"], clients, per_round)
        assert (cfg.rounds, cfg.batch_size, cfg.max_local_steps) == (50, 128, steps)  # DomainNet: 50 rounds
        assert cfg.local_epochs >= steps  # epochs never cap the steps, even for a client smaller than a batch
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("sgd", 0.01, 0.0)
        assert cfg.model.lora.r == 16
        assert not cfg.model.lora.heterogeneous and cfg.model.tuning == "lora"
        if cell["partition"] == "domain_dirichlet":
            assert cfg.partition.alpha == 0.5
        # what the paper fixes is never tuned away; only SGD's momentum and LoRA-FAIR's server steps are
        assert set(space) == ({"optimizer.momentum", "method.params.server_steps"} if cell["aggregation"] == "lora_fair"
                              else {"optimizer.momentum"})
        assert cfg.method.params.get("lambda") == (0.01 if cell["aggregation"] == "lora_fair" else None)
        assert cfg.data.source.startswith(f"images:{tmp_path / 'train'}?layout=domain/class")
        assert cfg.model.name.startswith("timm:vit_base_patch16_224")
    assert main(["lora_fair", "--profile", "paper", "--device", "cpu"]) == 2
    assert "reads its images from --data-dir" in capsys.readouterr().err


def test_lora_fair_paper_dry_run_prints_both_protocols(tmp_path, capsys):
    _domain_folders(tmp_path)
    assert main(["lora_fair", "--profile", "paper", "--data-dir", str(tmp_path), "--device", "cpu", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    protocol = {ln.split()[0]: (ln, lines[i + 1].strip()) for i, ln in enumerate(lines)
                if ln.startswith("  lora_fair-")}  # a cell's line, then its protocol's
    cell, detail = protocol["lora_fair-domain-domainnet"]
    assert "rounds  50" in cell and "tunes optimizer.momentum, method.params.server_steps" in cell
    assert detail == ("6 clients (domain), 6 a round, batch 128, local epochs 2, at most 2 steps, sgd lr 0.01 "
                      "momentum tuned, LoRA r 16 alpha 16, lambda 0.01, server_steps tuned")
    cell, detail = protocol["lora_fair-domain_dirichlet-a0.5-domainnet"]
    assert "rounds  50" in cell
    assert detail.startswith("30 clients (domain_dirichlet), 18 a round, batch 128, local epochs 5, at most 5 steps, "
                             "sgd lr 0.01 momentum tuned, LoRA r 16 alpha 16, lambda 0.01")
    import torch

    if not torch.cuda.is_available():  # the plan of a GPU profile prints on a machine without one, with a note
        assert main(["lora_fair", "--profile", "paper", "--data-dir", str(tmp_path), "--dry-run"]) == 0
        out = capsys.readouterr()
        assert "note: profile paper trains on cuda and this machine has no GPU" in out.err
        assert sum(ln.startswith("  lora_fair-") for ln in out.out.splitlines()) == 2
        assert main(["lora_fair", "--profile", "paper", "--data-dir", str(tmp_path), "--cells", "lora_fair-domain-"]) == 2
        assert "this machine has no GPU" in capsys.readouterr().err  # the launch itself still refuses


def test_lora_fair_paper_rounds_follow_the_dataset(tmp_path, capsys):
    nico = _domain_folders(tmp_path / "a", ("autumn", "rock"))  # NICO++'s contexts: 30 rounds
    by_name = _domain_folders(tmp_path / "NICO_pp", ("d0", "d1"))  # unknown domains, a NICO++ folder name
    unknown = _domain_folders(tmp_path / "b", ("d0", "d1"))
    for root, dataset, rounds in ((nico, "nicopp", 30), (by_name, "nicopp", 30), (unknown, "domainnet", 50)):
        got = {(c["dataset"], cfg.rounds) for c, _, cfg in _configs("lora_fair", "paper", data_dir=str(root))}
        assert got == {(dataset, rounds)}
    assert "neither DomainNet's nor NICO++'s" in capsys.readouterr().err  # the default is said, not silent


@pytest.mark.parametrize("study", ["rank_collapse", "lora_fair"])
@pytest.mark.parametrize("profile", ["smoke", "local", "paper"])
def test_every_profile_plans(study, profile, tmp_path, capsys):
    extra = ["--device", "cpu"] if profile == "paper" else []
    if study == "lora_fair" and profile == "paper":
        _domain_folders(tmp_path, ("real",))
        extra += ["--data-dir", str(tmp_path)]
    assert main([study, "--profile", profile, "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    n = len(study_plan(study, profile, **({"data_dir": str(tmp_path)} if "--data-dir" in extra else {})))
    assert f"{n} design cells" in out


def _record(method, seed, metrics, **cell):
    return {"aggregation": method, "alpha": cell.get("alpha", 0.5), "model": "fm_lora", "seed": seed,
            "run_id": f"{method}{seed}", "metrics": metrics, "cell": {"aggregation": method, **cell}}


def test_lora_fair_table_has_a_column_per_domain_and_the_mean_over_seeds():
    recs = [_record(m, s, {"domain_acc/clipart": 0.5 + 0.1 * s, "domain_acc/real": 0.7, "domain_avg_acc": 0.6 + 0.05 * s,
                           "worst_client_acc": 0.4}, partition="domain", alpha=0.5)
            for m in ("fedit", "lora_fair") for s in (0, 1)]
    rows, domains = lora_fair_rows(recs)
    assert domains == ["clipart", "real"] and [r["method"] for r in rows] == ["fedit", "lora_fair"]
    assert rows[1]["avg"][0] == pytest.approx(0.625) and rows[1]["domain_acc/clipart"][0] == pytest.approx(0.55)
    # a domain cell without a dataset tag ran DomainNet: Table 1's averages
    assert rows[1]["paper"] == 77.07 and rows[0]["paper"] == 75.75
    table = lora_fair_table(rows, domains)
    assert "feature non-IID (domain)   [paper column: LoRA-FAIR Table 1 (feature non-IID), DomainNet, ViT-B/16" in table
    line = [ln for ln in table.splitlines() if ln.startswith("lora_fair")][0]
    assert line.split()[1] == "2" and "62.5 ±  3.5" in line and line.endswith("77.07")


def test_lora_fair_paper_columns_match_each_cells_setting_and_dataset():
    """Tags are strings in MLflow: the cells' table and dataset come back as such."""
    metrics = {"domain_acc/autumn": 0.9, "domain_avg_acc": 0.9, "worst_client_acc": 0.8}
    recs = [_record(m, 0, metrics, partition=kind, alpha=0.5, table=str(t), dataset=ds)
            for m in ("ffa_lora", "fedit", "lora_fair") for kind, t in (("domain", 1), ("domain_dirichlet", 2))
            for ds in ("domainnet", "nicopp")]
    rows, _ = lora_fair_rows(recs)
    ref = {(r["setting"], r["method"]): r["paper"] for r in rows}
    assert ref[("feature non-IID (domain), DomainNet", "lora_fair")] == 77.07
    assert ref[("feature non-IID (domain), NICO++", "lora_fair")] == 91.24
    assert ref[("feature non-IID (domain), NICO++", "ffa_lora")] == 90.28
    assert ref[("feature + label non-IID (alpha 0.5), DomainNet", "lora_fair")] == 74.99
    assert ref[("feature + label non-IID (alpha 0.5), DomainNet", "fedit")] == 73.89
    assert ref[("feature + label non-IID (alpha 0.5), NICO++", "lora_fair")] == 90.04
    assert ref[("feature + label non-IID (alpha 0.5), NICO++", "fedit")] == 89.48
    assert ref[("feature + label non-IID (alpha 0.5), NICO++", "ffa_lora")] is None  # Table 2: none taken
    table = lora_fair_table(rows, ["autumn"]).splitlines()
    t2 = table.index("feature + label non-IID (alpha 0.5), NICO++   [paper column: LoRA-FAIR Table 2 "
                     "(feature + label non-IID), NICO++, ViT-B/16, Avg]")
    body = {ln.split()[0]: ln for ln in table[t2 + 3:t2 + 6]}  # fedit, ffa_lora, lora_fair
    assert table[t2 + 1].endswith("paper T2 Avg") and list(body) == ["fedit", "ffa_lora", "lora_fair"]
    assert body["ffa_lora"].endswith(" -") and body["fedit"].endswith("89.48") and body["lora_fair"].endswith("90.04")
    t1 = table.index("feature non-IID (domain), NICO++   [paper column: LoRA-FAIR Table 1 (feature non-IID), "
                     "NICO++, ViT-B/16, Avg]")
    assert table[t1 + 1].endswith("paper T1 Avg") and table[t1 + 5].endswith("91.24") and t1 < t2  # Table 1 first
    # label skew (the smoke and local profiles) has no paper column
    [row] = lora_fair_rows([_record("fedit", 0, {"global_acc": 0.5}, partition="dirichlet", alpha=0.5)])[0]
    assert row["paper"] is None and "[no paper column]" in lora_fair_table([row], [])


def test_rank_collapse_rows_average_the_final_energy_over_seeds():
    recs = [_record("raflora", s, {"mean_client_acc": 0.8, "worst_client_acc": 0.7, "gap": 0.1,
                                   "energy_outside_shared": 0.3 + 0.1 * s, "effective_rank": 3.0},
                    rank_profile="uniform") for s in (0, 1, 2)]
    [row] = rank_collapse_rows(recs)
    assert row["seeds"] == 3 and row["energy_outside_shared"][0] == pytest.approx(0.4)
    assert row["energy_outside_shared"][1] == pytest.approx(0.1)


_launch_and_report = launch_and_report


def _final_metric(tmp_path, study: str, cell: str, key: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    [run] = [r for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("cell.name") == cell and r.data.tags.get("cell.stage") == "seeds"]
    hist = client.get_metric_history(run.info.run_id, key)
    assert [m.step for m in hist] == [1, 2, 3]  # every round logged, for the figure
    return run.data.metrics[key]


@pytest.mark.slow
def test_rank_collapse_launch_reports_energy_outside_the_shared_rank(tmp_path):
    _, report = _launch_and_report(tmp_path, "rank_collapse", "^(flexlora|raflora)-")
    for method in ("flexlora", "raflora"):
        energy = _final_metric(tmp_path, "rank_collapse", f"{method}-uniform-a0.5", "energy_outside_shared")
        [line] = [ln for ln in report.splitlines() if ln.split()[:3] == ["0.5", "uniform", method]]
        means = re.findall(r"(-?\d+\.\d) ±", line)  # mean acc, worst acc, gap, 1-rho_rmin
        assert float(means[3]) == pytest.approx(100 * energy, abs=0.051)  # the 1-rho_rmin column
        assert 0 < energy < 1
    files = {f.name for f in (tmp_path / "report").iterdir()}
    assert files == {"table.csv", "table.txt", "launch.txt", "contrasts.csv", "energy_outside_shared.png",
                     "worst_client_over_rounds.png", "energy_outside_shared.svg", "worst_client_over_rounds.svg"}
    assert (tmp_path / "report" / "energy_outside_shared.png").stat().st_size > 5000


@pytest.mark.slow
def test_lora_fair_launch_reports_a_table_one_row_per_method(tmp_path):
    launch, report = _launch_and_report(tmp_path, "lora_fair", "^(fedit|lora_fair)-")
    assert "tunes optimizer.lr, method.params.lambda, method.params.server_steps" in launch
    for method in ("fedit", "lora_fair"):
        acc = _final_metric(tmp_path, "lora_fair", f"{method}-dirichlet-a0.5", "global_acc")
        [line] = [ln for ln in report.splitlines() if ln.startswith(method + " ")]
        avg = re.findall(r"(-?\d+\.\d) ±", line)[0]
        assert float(avg) == pytest.approx(100 * acc, abs=0.051) and not math.isnan(acc)
    assert "label skew, alpha 0.5" in report
    assert {f.name for f in (tmp_path / "report").iterdir()} == {"table.csv", "table.txt", "launch.txt", "contrasts.csv",
                                                                 "accuracy_over_rounds.png", "accuracy_over_rounds.svg"}
