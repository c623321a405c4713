"""The rank_collapse and lora_fair studies: design cells, spaces, plans of every profile, their
reports, and a real launch + report of each (slow)."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from PIL import Image

from fedcore.config import make_config
from search_spaces import lora as ls
from sweeps.launch import main
from sweeps.report_lora import lora_fair_rows, lora_fair_table, rank_collapse_rows
from sweeps.studies import get_profile, get_study
from tests.conftest import launch_and_report, study_configs


_configs = study_configs


def test_rank_collapse_cells_cover_methods_by_rank_profile_by_alpha():
    got = {(c["aggregation"], c["rank_profile"], c["alpha"]) for c, _, _ in _configs("rank_collapse", "local")}
    assert got == {(m, rp, a) for m in ("fedit", "hetlora", "flexlora", "flora", "raflora")
                   for rp in ("uniform", "heavy_tail_light", "heavy_tail_strong") for a in (0.1, 1.0)}
    for cell, space, cfg in _configs("rank_collapse", "local"):
        assert cfg.method.name == cell["aggregation"] and cfg.model.lora.rank_profile == cell["rank_profile"]
        assert cfg.partition.alpha == cell["alpha"] and cfg.model.lora.heterogeneous
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
    dist = ls.rank_profile_space()["model.lora.rank_profile"]
    for choice in dist.choices:
        assert make_config({"model": {"name": "minilm-l6"}}, **{"model.lora.rank_profile": choice}).model.lora.heterogeneous


def test_lora_fair_paper_profile_reads_domain_folders_from_data_dir(tmp_path, capsys):
    for split in ("train", "test"):
        for d in ("clipart", "real"):
            (tmp_path / split / d / "cat").mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / d / "cat" / "0.png")
    cells = list(_configs("lora_fair", "paper", data_dir=str(tmp_path)))
    assert {(c["partition"], c["aggregation"]) for c, _, _ in cells} == {
        (p, m) for p in ("domain", "domain_dirichlet") for m in ls.LORA_FAIR_METHODS}
    cfg = cells[0][2]
    assert cfg.data.source.startswith(f"images:{tmp_path / 'train'}?layout=domain/class")
    assert cfg.model.name.startswith("timm:vit_base_patch16_224") and cfg.partition.kind == "domain"
    assert main(["lora_fair", "--profile", "paper", "--device", "cpu"]) == 2
    assert "reads its data from --data-dir" in capsys.readouterr().err


@pytest.mark.parametrize("study", ["rank_collapse", "lora_fair"])
@pytest.mark.parametrize("profile", ["smoke", "local", "paper"])
def test_every_profile_plans(study, profile, tmp_path, capsys):
    extra = ["--device", "cpu"] if profile == "paper" else []
    if study == "lora_fair" and profile == "paper":
        for split in ("train", "test"):
            (tmp_path / split / "real" / "cat").mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / "real" / "cat" / "0.png")
        extra += ["--data-dir", str(tmp_path)]
    assert main([study, "--profile", profile, "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    n = len(get_study(study).cells(get_profile(get_study(study), profile, **(
        {"data_dir": str(tmp_path)} if "--data-dir" in extra else {})), False))
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
    assert rows[1]["paper"] == 77.07 and rows[0]["paper"] == 75.75  # METHODS.md 5.5, DomainNet ViT
    table = lora_fair_table(rows, domains)
    assert "feature non-IID (domain)" in table
    line = [ln for ln in table.splitlines() if ln.startswith("lora_fair")][0]
    assert line.split()[1] == "2" and "62.5 ±  3.5" in line and line.endswith("77.07")


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
        assert float(line.split()[13]) == pytest.approx(100 * energy, abs=0.051)  # the 1-rho_rmin column
        assert 0 < energy < 1
    files = {f.name for f in (tmp_path / "report").iterdir()}
    assert files == {"table.csv", "table.txt", "energy_outside_shared.png", "worst_client_over_rounds.png"}
    assert (tmp_path / "report" / "energy_outside_shared.png").stat().st_size > 5000


@pytest.mark.slow
def test_lora_fair_launch_reports_a_table_one_row_per_method(tmp_path):
    launch, report = _launch_and_report(tmp_path, "lora_fair", "^(fedit|lora_fair)-")
    assert "tunes optimizer.lr, method.params.lambda, method.params.server_steps" in launch
    for method in ("fedit", "lora_fair"):
        acc = _final_metric(tmp_path, "lora_fair", f"{method}-dirichlet-a0.5", "global_acc")
        [line] = [ln for ln in report.splitlines() if ln.startswith(method + " ")]
        assert float(line.split()[2]) == pytest.approx(100 * acc, abs=0.051) and not math.isnan(acc)
    assert "label skew, alpha 0.5" in report
    assert {f.name for f in (tmp_path / "report").iterdir()} == {"table.csv", "table.txt", "accuracy_over_rounds.png"}
