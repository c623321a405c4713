import json
import subprocess
import sys

from fedcore.methods import METHODS


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fedcore.run", *args], capture_output=True, text=True, timeout=timeout)


def test_list_methods_prints_names_first():
    out = run("--list-methods")
    assert out.returncode == 0
    rows = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == list(METHODS) and {"fedavg", "fedprox", "fedavgw", "fedit"} <= {r[0] for r in rows}
    ranks = {r[0]: r[1] for r in rows}  # the second column: whether the config accepts mixed ranks
    assert ranks["fedit"] == "mixed LoRA ranks" and ranks["fedavg"] == ranks["fedpurel"] == "one LoRA rank"


def test_bad_config_exits_2_with_one_line():
    out = run("--alpha", "0", "--rounds", "1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: invalid config: partition.alpha: must be > 0, got 0.0; allowed: any positive number (Dirichlet concentration)"]
    assert "Traceback" not in out.stderr


def test_short_run_prints_rounds_table_and_resumes(tmp_path):
    args = ["--data", "synthetic:topics?n=200&test=40", "--clients", "4", "--rounds", "2",
            "--set", "model.embed_dim=8", "--set", "model.num_filters=4", "--max-len", "16",
            "--checkpoint", str(tmp_path / "ck.pt"), "--json-out", str(tmp_path / "out.json")]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("round ") for line in lines) == 2
    assert any("SYNTHETIC" in line for line in lines)
    assert "per-client accuracy (final round):" in out.stdout
    result = json.loads((tmp_path / "out.json").read_text())
    assert [h["round"] for h in result["history"]] == [1.0, 2.0]
    assert len(result["clients"]) == 4
    # resume to 3 rounds: only round 3 runs, and rounds 1-2 are kept as they were
    args[args.index("--rounds") + 1] = "3"
    args[args.index("--json-out") + 1] = str(tmp_path / "out3.json")
    more = run(*args, "--resume")
    assert more.returncode == 0, more.stderr
    assert "resumed   from" in more.stdout
    assert sum(line.startswith("round ") for line in more.stdout.splitlines()) == 1
    extended = json.loads((tmp_path / "out3.json").read_text())
    assert extended["history"][2]["round"] == 3.0
    # round 3 after the resume is what an uninterrupted 3-round run computes
    straight = args[: args.index("--checkpoint")] + ["--json-out", str(tmp_path / "straight.json")]
    assert run(*straight).returncode == 0
    untimed = [{k: v for k, v in h.items() if "seconds" not in k}
               for h in json.loads((tmp_path / "straight.json").read_text())["history"]]
    assert [{k: v for k, v in h.items() if "seconds" not in k} for h in extended["history"]] == untimed
    # a checkpoint of another config is refused with a clear line, not misused
    args[args.index("--clients") + 1] = "3"
    other = run(*args, "--resume")
    assert other.returncode == 2 and "different config" in other.stderr and "Traceback" not in other.stderr


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1\n")
    garbage = tmp_path / "ck.pt"
    garbage.write_text("not a state")
    many = tmp_path / "many.csv"  # 77 distinct string labels
    many.write_text("text,label\n" + "".join(f"text number {i},tag{i % 77}\n" for i in range(154)))
    cases = [
        (["--data", f"csv:{many}?class_names=World,Sports,Business,Sci", "--clients", "2", "--rounds", "1"],
         "class_names: 4 names (World, Sports, Business, Sci) for 77 distinct labels"),
        (["--model", "minilm-l6", "--method", "fedavg", "--set", "model.lora.ranks=[2,4,8,8,8,8,8,8,8,8]"],
         "model.lora: method 'fedavg' cannot train clients of different LoRA ranks"),
        (["--set", "noequals"], "--set expects KEY=VALUE"),
        (["--config", str(bad_yaml)], "is not valid YAML"),
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--set", "optimizer.lrr=0.1"], "did you mean 'lr'"),
        (["--data", "synthetic:topics?n=60&test=20", "--clients", "2", "--rounds", "1",
          "--checkpoint", str(garbage), "--resume"], "cannot resume from"),
    ]
    for args, message in cases:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), (args, out.stderr)
