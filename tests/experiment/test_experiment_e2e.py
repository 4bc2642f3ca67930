"""cem-experiment end to end: the smoke spec through the real cem-train and cem-attack, interrupted and resumed,
reported as Table 1 with plots and an HTML page; a σ change touches only its cells; two seeds give intervals.

One smoke run is shared by the module (about 2 minutes on 2 busy cores): it is killed after its first stored
cell and resumed, so the resume test and the report tests read the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from polling import wait_for

from cem.stats import mean_interval
from experiment.revision import NOT_RECORDED, code_revision, code_root

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.toml"
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def command(*args: str) -> list[str]:
    """``cem-experiment ARGS``: the installed console script, else the module it runs."""
    script = Path(sys.executable).parent / "cem-experiment"
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "experiment.cli", *args]


def run(*args: str, timeout_s: float = 480) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)


def cells_revision() -> str | None:
    """The revision of the code the runner's cells import (it runs them from ``REPO``)."""
    return code_revision(code_root(sys.executable, os.environ, cwd=REPO))


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Each stored cell file: (mtime in ns, sha256 of its bytes)."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted((folder / "cells").glob("*.json"))}


@dataclass(frozen=True)
class SmokeRun:
    out: Path
    at_kill: dict[str, tuple[int, str]]
    resumed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """The smoke spec SIGKILLed (with its children) once a cell is stored, then run again with 2 jobs.

    The first run has one job, so the kill throws away little work (the attack it had just started)."""
    out = tmp_path_factory.mktemp("smoke")
    args = ["run", str(SMOKE), "--out", str(out), "--threads", "1", "--device", "cpu", "--no-progress"]
    first = subprocess.Popen(command(*args, "--jobs", "1"), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: list((out / "cells").glob("*.json")) if (out / "cells").is_dir() else [], 300,
                 "the first stored cell")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the runner and every cell it started: one process group
        first.wait(timeout=30)
    at_kill = snapshot(out)
    resumed = run(*args, "--jobs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return SmokeRun(out, at_kill, resumed)


def test_an_interrupted_run_resumes_without_redoing_finished_cells(smoke: SmokeRun) -> None:
    assert 1 <= len(smoke.at_kill) < 8, f"the kill should leave the grid unfinished, stored: {sorted(smoke.at_kill)}"
    after = snapshot(smoke.out)
    assert len(after) == 8 and sum(name.startswith("train-") for name in after) == 4
    for name, stamp in smoke.at_kill.items():
        assert after[name] == stamp, f"{name} was rewritten by the resumed run"
    assert f"8 cells, {len(smoke.at_kill)} were stored, {8 - len(smoke.at_kill)} ran now, 0 failed" in \
        smoke.resumed.stdout
    assert not list(smoke.out.glob("*/.tmp-*")), "the killed cells' temporary folders were not swept"
    revision = cells_revision()
    for cell in (smoke.out / "cells").glob("*.json"):
        record = json.loads(cell.read_text())
        kind, key = cell.stem.split("-", 1)
        assert (record["kind"], record["key"], record["code_revision"]) == (kind, key, revision)
        assert (smoke.out / "logs" / f"{kind}-{key}.log").stat().st_size > 0
        outputs = smoke.out / ("bundles" if kind == "train" else "attacks") / key
        assert (outputs / ("manifest.json" if kind == "train" else "metrics.json")).is_file()
        if kind == "attack":  # convergence is recorded per column, with the validation curve
            for column in ("train", "infer"):
                detail = record["columns"][column]
                assert len(detail["val_mse"]) == detail["epochs"] == 1
                assert detail["not_converged"]  # one epoch: its best epoch is its last


def test_the_report_is_table1_plots_and_one_self_contained_page(smoke: SmokeRun) -> None:
    done = run("report", str(smoke.out), "--json", timeout_s=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = smoke.out / "report"
    for stem in ("pareto", "mse_vs_entropy", "gallery-digits-vgg11_bn_sgm-cut-4-bottleneck",
                 "gallery-digits-vgg11_bn_sgm-cut-4-dropout"):
        for suffix in (".png", ".svg"):
            assert (report / f"{stem}{suffix}").stat().st_size > 1000, f"{stem}{suffix}"
    table = json.loads(done.stdout.strip().splitlines()[-1])
    assert table == json.loads((report / "table1.json").read_text())
    (group,) = table["groups"]
    assert [v["method"] for v in group["variants"]] == ["Bottleneck", "Bottleneck+CEM", "Dropout", "Dropout+CEM"]
    assert len(group["paired_gains"]) == 2 and len(table["convergence"]) == 8 and not table["missing"]
    # the average rows and their gain, recomputed by hand from the stored cells
    cells = {p.stem: json.loads(p.read_text()) for p in (smoke.out / "cells").glob("*.json")}
    trains = {r["key"]: r for r in cells.values() if r["kind"] == "train"}
    mse = {(trains[r["train_key"]]["cem_lambda"], trains[r["train_key"]]["defenses"][-1]["name"]):
           r["metrics"]["infer"]["mse"] for r in cells.values() if r["kind"] == "attack"}
    without = (mse[(0.0, "bottleneck")] + mse[(0.0, "dropout")]) / 2
    with_cem = (mse[(2.0, "bottleneck")] + mse[(2.0, "dropout")]) / 2
    (average,) = group["averages"]
    assert average["without_cem"]["decoder_mse_infer"]["mean"] == pytest.approx(without)
    assert average["gain"]["decoder_mse_infer"] == pytest.approx(100 * (with_cem - without) / without)
    markdown = (report / "table1.md").read_text()
    assert "Average w/o CEM" in markdown and "CEM gain of the averages" in markdown and "†" in markdown
    page = (report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "http://" not in page and "https://" not in page
    assert "did not converge" in page and "Bottleneck+CEM" in page
    # what the cells cost, from their records: 4 trainings and 4 decoder attacks, all stored
    walls = {kind: sorted(r["wall_s"] for r in cells.values() if r["kind"] == kind) for kind in ("train", "attack")}
    cost = {entry["kind"]: entry for entry in table["cost"]}
    assert list(cost) == ["train", "decoder"]
    for kind, name in (("train", "train"), ("attack", "decoder")):
        assert (cost[name]["stored"], cost[name]["remaining"], cost[name]["remaining_s"]) == (4, 0, 0)
        assert cost[name]["total_s"] == pytest.approx(sum(walls[kind]), abs=0.1)
        assert cost[name]["median_s"] == pytest.approx((walls[kind][1] + walls[kind][2]) / 2, abs=0.1)
    assert (report / "cost.md").read_text().startswith("cells | stored | median wall s") and "<h2>Cost</h2>" in page
    assert table["code_revisions"] == {cells_revision() or NOT_RECORDED: 8}
    # beyond MSE: the Bottleneck row's PSNR over its one seed is the stored one, and its ξ counts the model
    (detail,) = table["detail"]["groups"]
    bottleneck = next(v for v in detail["variants"] if v["method"] == "Bottleneck")
    (attack,) = [r for r in cells.values() if r["kind"] == "attack"
                 and trains[r["train_key"]]["cem_lambda"] == 0.0 and trains[r["train_key"]]["defenses"][-1]["name"]
                 == "bottleneck"]
    assert bottleneck["metrics"]["decoder_psnr_train"]["mean"] == pytest.approx(attack["metrics"]["train"]["psnr"])
    xi = next(x for x in detail["xi"] if x["method"] == "Bottleneck")
    assert xi["judged"] == {"estimate": 1, "relative": 1}
    assert (report / "detail.md").read_text().count("### ") == 2 and "<h2>Beyond MSE</h2>" in page


def test_changing_one_sigma_reruns_only_that_sigmas_cells(smoke: SmokeRun, tmp_path: Path) -> None:
    text = SMOKE.read_text()
    row = 'label = "Dropout"\n'
    assert text.count(row) == 1
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace(row, row + "sigma = 0.15\n"))
    done = run("run", str(changed), "--out", str(smoke.out), "--dry-run", timeout_s=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split(None, 3) for line in done.stdout.splitlines() if line.startswith(("train ", "attack "))]
    stored = {p.stem for p in (smoke.out / "cells").glob("*.json")}
    status = {f"{kind}-{key}": (state, what) for kind, key, state, what in lines}
    assert len(status) == 8
    for name, (state, what) in status.items():
        assert state == ("to-run" if "Dropout σ=0.15" in what else "cached"), (name, state, what)
        assert (name in stored) == (state == "cached")
    assert sum(state == "to-run" for state, _ in status.values()) == 4  # Dropout's two trainings and their attacks
    assert "4 cached, 4 to run" in done.stdout
    assert "to run: 2 train, 2 decoder: about " in done.stdout  # priced at the stored cells' medians
    assert {Path(name).stem for name in snapshot(smoke.out)} == stored  # a dry run runs and writes nothing


def test_two_seeds_give_intervals_from_the_stored_numbers(smoke: SmokeRun, tmp_path: Path) -> None:
    text = SMOKE.read_text()
    dropout = '[[rows]]\nlabel = "Dropout"\ndefenses = ["dropout:0.2"]\n'
    for old in (dropout, "seeds = [0]\n", "cem_lambdas = [0, 2]\n"):
        assert text.count(old) == 1, old
    spec = tmp_path / "two-seeds.toml"  # Bottleneck without CEM, seeds 0 and 1: seed 0's cells are the smoke run's
    spec.write_text(text.replace(dropout, "").replace("seeds = [0]\n", "seeds = [0, 1]\n")
                    .replace("cem_lambdas = [0, 2]\n", "cem_lambdas = [0]\n"))
    out = tmp_path / "out"
    dry = run("run", str(spec), "--out", str(out), "--dry-run", "--reuse-from", str(smoke.out), timeout_s=180)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "4 cells: 0 cached, 2 to copy from --reuse-from, 2 to run" in dry.stdout  # the attack after its bundle
    assert [line.split()[2] for line in dry.stdout.splitlines() if " seed 0" in line] == ["reuse", "reuse"]
    assert not out.exists()  # a dry run copies nothing
    done = run("run", str(spec), "--out", str(out), "--jobs", "2", "--threads", "1", "--device", "cpu",
               "--no-progress", "--reuse-from", str(smoke.out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"copied 2 stored cells from {smoke.out}" in done.stdout  # seed 0's training and attack, same keys
    assert "4 cells, 2 were stored, 2 ran now, 0 failed" in done.stdout  # only seed 1 trained and attacked
    reported = run("report", str(out), "--json", timeout_s=180)
    assert reported.returncode == 0, reported.stderr[-3000:]
    (group,) = json.loads(reported.stdout.strip().splitlines()[-1])["groups"]
    (variant,) = group["variants"]
    assert (variant["method"], variant["seeds"]) == ("Bottleneck", [0, 1])
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    trains = {r["key"]: r for r in cells if r["kind"] == "train" and r["cem_lambda"] == 0
              and r["defenses"][-1]["name"] == "bottleneck"}
    assert sorted(r["seed"] for r in trains.values()) == [0, 1]
    accuracy = mean_interval(r["accuracy"] for r in trains.values())
    attacks = [a for a in cells if a["kind"] == "attack" and a["train_key"] in trains]
    mse = mean_interval(a["metrics"]["infer"]["mse"] for a in attacks)
    assert variant["metrics"]["accuracy"] == pytest.approx(accuracy.to_dict())
    assert variant["metrics"]["decoder_mse_infer"] == pytest.approx(mse.to_dict())
    assert mse.n == 2 and variant["metrics"]["decoder_mse_infer"]["ci95"] > 0
    assert "±" in (out / "report" / "table1.md").read_text()


def test_a_folder_kept_without_weights_reports_the_same_and_rebuilds_one_bundle_for_a_missing_attack(
        smoke: SmokeRun, tmp_path: Path) -> None:
    kept = tmp_path / "kept"  # what git keeps of a results/ folder (.gitignore): no bundles, logs, report or lock
    shutil.copytree(smoke.out, kept, ignore=shutil.ignore_patterns("bundles", "logs", "report", ".lock"))
    tables = []
    for folder in (smoke.out, kept):
        done = run("report", str(folder), "--json", timeout_s=180)
        assert done.returncode == 0, done.stderr[-3000:]
        tables.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert tables[0]["groups"] == tables[1]["groups"] and not tables[1]["missing"]
    cells = {p.stem: json.loads(p.read_text()) for p in (kept / "cells").glob("*.json")}
    redo = next(r for r in cells.values() if r["kind"] == "attack")
    (kept / "cells" / f"attack-{redo['key']}.json").unlink()
    dry = run("run", str(SMOKE), "--out", str(kept), "--dry-run", timeout_s=180)
    assert dry.returncode == 0, dry.stderr[-3000:]
    states = {key: state for _, key, state, _ in (line.split(None, 3) for line in dry.stdout.splitlines()
                                                 if line.startswith(("train ", "attack ")))}
    assert states.pop(redo["train_key"]) == "rebuild" and states.pop(redo["key"]) == "to-run"
    assert set(states.values()) == {"cached"}
    done = run("run", str(SMOKE), "--out", str(kept), "--jobs", "1", "--threads", "1", "--device", "cpu",
               "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 cells, 6 were stored, 2 ran now, 0 failed" in done.stdout  # the one bundle, then its attack
    rebuilt = json.loads((kept / "cells" / f"train-{redo['train_key']}.json").read_text())
    assert rebuilt["model_id"] == cells[f"train-{redo['train_key']}"]["model_id"]  # training is deterministic
    assert json.loads((kept / "cells" / f"attack-{redo['key']}.json").read_text())["model_id"] == rebuilt["model_id"]
