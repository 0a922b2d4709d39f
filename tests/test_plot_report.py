"""The degradation study's analysis, figure and report (experiments/degradation/) and
the library's run reading (cnn/runs.py) on synthetic sweeps (hand-checked numbers)."""
import json
import pathlib

import pytest

from cnn import runs as runs_lib
from experiments.degradation import analysis
from experiments.degradation import plot as plot_script
from experiments.degradation import report as report_script

STEPS = 1000


def write_run(root: pathlib.Path, model: str, seed: int, *, train_end: tuple,
              eval_end: float, validation: bool = False, test: float = None,
              done: bool = True) -> pathlib.Path:
  """A fake workdir: train error logged every 25 steps, falling linearly to the two
  given values at steps 975 and 1000; evaluations at 500 and 1000 (the last one is
  `eval_end`); per-stage gradient norms."""
  workdir = root / f"{model}_s{seed}"
  workdir.mkdir(parents=True)
  config = {"seed": seed, "model": {"name": model, "width": 8},
            "data": {"validation_size": 5000 if validation else 0},
            "train": {"steps": STEPS}}
  (workdir / "config.json").write_text(json.dumps(config))
  rows = []
  for step in range(25, STEPS + 1, 25):
    if step == 975:
      err = train_end[0]
    elif step == 1000:
      err = train_end[1]
    else:
      err = 0.9 - 0.5 * step / STEPS
    row = {"step": step, "train_top1_error": err, "grad_norm/stem": 1.0,
           "grad_norm/stage1": 0.5, "grad_norm/stage2": 0.4, "grad_norm/stage3": 0.3,
           "grad_norm/head": 0.2}
    if step == 500:
      row["eval_top1_error"] = 0.7
    if step == STEPS:
      row["eval_top1_error"] = eval_end
    rows.append(row)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if done:
    (workdir / "final.json").write_text(json.dumps({"status": "done", **rows[-1]}))
  if test is not None:
    (workdir / "test.json").write_text(json.dumps({"top1_error": test, "split": "test"}))
  return workdir


def degradation_sweep(root, plain_train, resnet_train):
  """Depths 20/32/56, two seeds; final train errors per depth given for seed 0, seed 1
  adds 0.04 (so each cell has std 0.02 * sqrt(2) = 0.0283)."""
  for family, finals in (("plain", plain_train), ("resnet", resnet_train)):
    for depth, value in zip((20, 32, 56), finals):
      for seed in (0, 1):
        v = value + 0.04 * seed
        write_run(root, f"{family}{depth}", seed, train_end=(v - 0.01, v + 0.01),
                  eval_end=v + 0.1)
  return root


def test_final_errors_and_table_by_hand(tmp_path):
  root = degradation_sweep(tmp_path, plain_train=(0.10, 0.20, 0.30),
                           resnet_train=(0.09, 0.08, 0.07))
  runs = analysis.load_runs(root)
  assert len(runs) == 12
  # plain20 seed 0: windows ending at 975 (0.09) and 1000 (0.11) lie in the last 5 %
  # of 1000 steps (after step 950): (0.09 + 0.11) / 2 = 0.10.
  p20 = next(r for r in runs if r.name == "plain20_s0")
  assert analysis.final_train_error(p20) == pytest.approx(0.10)
  assert analysis.final_eval_error(p20) == pytest.approx(0.20)
  assert analysis.final_test_error(p20) == pytest.approx(0.20)   # evaluated on test
  cells = {(c.family, c.depth): c for c in analysis.summarize(runs)}
  # Seeds 0.10 and 0.14: mean 0.12, sample std sqrt(2 * 0.02^2 / 1) = 0.028284.
  assert cells["plain", 20].train[0] == pytest.approx(0.12)
  assert cells["plain", 20].train[1] == pytest.approx(0.028284, abs=1e-6)
  assert cells["plain", 20].n == 2 and cells["plain", 20].done == 2
  text = report_script.render(runs, str(root))
  assert "| plain-20 | 2 (2) | 1000 | 12.00 ± 2.83 | 22.00 ± 2.83 | (only plotted) |" in text
  # The paper's Table 6: ResNet-20 8.75 %, ResNet-56 6.97 %.
  assert "| ResNet-20 | 2 (2) | 1000 | 11.00 ± 2.83 | 21.00 ± 2.83 | 8.75 |" in text
  assert "| ResNet-56 | 2 (2) | 1000 | 9.00 ± 2.83 | 19.00 ± 2.83 | 6.97 |" in text


def test_verdict_when_the_degradation_holds(tmp_path):
  root = degradation_sweep(tmp_path, plain_train=(0.10, 0.20, 0.30),
                           resnet_train=(0.09, 0.08, 0.07))
  sentences = analysis.verdict(analysis.summarize(analysis.load_runs(root)), "train")
  assert "the degradation problem holds" in sentences[0]
  assert "deeper residual nets are better" in sentences[1]
  assert "At every depth the ResNet has the lower" in sentences[2]


def test_verdict_when_it_does_not(tmp_path):
  root = degradation_sweep(tmp_path, plain_train=(0.30, 0.20, 0.10),
                           resnet_train=(0.07, 0.08, 0.09))
  sentences = analysis.verdict(analysis.summarize(analysis.load_runs(root)), "train")
  assert "falls with every step in depth" in sentences[0]
  assert "no degradation is visible here" in sentences[0]
  assert "the opposite of the paper's 'deeper is better' ordering" in sentences[1]
  # ResNet (0.09, 0.10, 0.11 means) vs plain (0.32, 0.22, 0.12): lower at all depths.
  assert "At every depth" in sentences[2]


def test_verdict_when_neither_ordering_nor_its_reverse(tmp_path):
  # plain 0.30, 0.35, 0.30 (56 == 20); resnet 0.08, 0.07, 0.08: neither direction.
  root = degradation_sweep(tmp_path, plain_train=(0.30, 0.35, 0.30),
                           resnet_train=(0.08, 0.07, 0.08))
  sentences = analysis.verdict(analysis.summarize(analysis.load_runs(root)), "train")
  assert "does not have a higher training error" in sentences[0]
  assert "does not show here" in sentences[1]


def test_verdict_partial_ordering(tmp_path):
  # plain: 20 -> 32 falls, 32 -> 56 rises, 56 above 20 by 0.05: partly.
  root = degradation_sweep(tmp_path, plain_train=(0.20, 0.15, 0.25),
                           resnet_train=(0.09, 0.10, 0.07))
  sentences = analysis.verdict(analysis.summarize(analysis.load_runs(root)), "train")
  assert "by 5.00 points" in sentences[0] and "only partly" in sentences[0]
  assert "by 2.00 points" in sentences[1] and "only partly" in sentences[1]


def test_validation_runs_report_test_json(tmp_path):
  write_run(tmp_path, "plain20", 0, train_end=(0.3, 0.3), eval_end=0.40,
            validation=True, test=0.42)
  write_run(tmp_path, "resnet20", 0, train_end=(0.2, 0.2), eval_end=0.30,
            validation=True, done=False)
  runs = analysis.load_runs(tmp_path)
  text = report_script.render(runs, str(tmp_path))
  assert "| plain-20 | 1 (1) | 1000 | 30.00 | 40.00 | 42.00 | (only plotted) |" in text
  # No test.json: the validation error is not passed off as test error.
  assert "| ResNet-20 | 1 (0) | 1000 | 20.00 | 30.00 | n/a | 8.75 |" in text
  assert "Unfinished runs" in text and "resnet20_s0" in text


def test_cifar_resnet_names_are_read():
  assert analysis.family_depth({"model": {"name": "cifar_resnet", "depth": 44,
                                        "residual": False}}) == ("plain", 44)
  assert analysis.family_depth({"model": {"name": "resnet110"}}) == ("resnet", 110)
  assert analysis.family_depth({"model": {"name": "lenet5"}}) == (None, None)


def test_plot_writes_png_and_pdf(tmp_path, capsys):
  root = degradation_sweep(tmp_path / "sweep", plain_train=(0.10, 0.20, 0.30),
                           resnet_train=(0.09, 0.08, 0.07))
  out = tmp_path / "figs" / "fig6"
  assert plot_script.main([str(root), "--out", str(out)]) == 0
  for name in ("fig6.png", "grad_norms.png"):
    data = (tmp_path / "figs" / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  for name in ("fig6.pdf", "grad_norms.pdf"):
    assert (tmp_path / "figs" / name).read_bytes()[:5] == b"%PDF-"
  printed = capsys.readouterr().out
  assert "fig6.png" in printed and "grad_norms.pdf" in printed


def test_plot_and_report_refuse_an_empty_root(tmp_path, capsys):
  for main in (plot_script.main, report_script.main):
    with pytest.raises(SystemExit) as e:
      main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No plain or ResNet runs") and err.count("\n") == 1


def test_imagenet_runs_are_compared_with_table2(tmp_path):
  for model, end in (("plain18", 0.30), ("plain34", 0.31), ("resnet18", 0.30),
                     ("resnet34", 0.27)):
    workdir = write_run(tmp_path, model, 0, train_end=(end, end), eval_end=end)
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["source"] = "tfds:imagenet2012"
    (workdir / "config.json").write_text(json.dumps(config))
  text = report_script.render(analysis.load_runs(tmp_path), str(tmp_path))
  # He et al. Table 2: plain-18 27.94, plain-34 28.54, ResNet-18 27.88, ResNet-34 25.03.
  assert "paper top-1 error % (Table 2)" in text
  assert "| plain-34 | 1 (1) | 1000 | 31.00 | 31.00 | 28.54 |" in text
  assert "| ResNet-34 | 1 (1) | 1000 | 27.00 | 27.00 | 25.03 |" in text


def test_final_training_error_uses_at_least_two_windows(tmp_path):
  # 200 steps logged every 10: the last 5 % (10 steps) hold one window, so the last
  # two count: windows ending at 190 (0.40) and 200 (0.30) -> 0.35.
  workdir = tmp_path / "plain20_s0"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"model": {"name": "plain20"},
                                                   "train": {"steps": 200}}))
  rows = [{"step": s, "train_top1_error": 0.5} for s in range(10, 181, 10)]
  rows += [{"step": 190, "train_top1_error": 0.40}, {"step": 200, "train_top1_error": 0.30}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert analysis.final_train_error(analysis.read_run(workdir)) == pytest.approx(0.35)


def test_library_reads_any_runs_and_means_over_seeds(tmp_path):
  """cnn.runs knows no study: a sweep root and a lone workdir load alike, and the
  seeds of one setting are grouped and averaged."""
  root = degradation_sweep(tmp_path / "sweep", plain_train=(0.10, 0.20, 0.30),
                           resnet_train=(0.09, 0.08, 0.07))
  lone = write_run(tmp_path / "other", "lenet5", 0, train_end=(0.5, 0.5), eval_end=0.6)
  found = runs_lib.load([root, lone])
  assert len(found) == 13 and found[-1].name == "lenet5_s0"
  assert runs_lib.last_value(found[-1], "eval_top1_error") == pytest.approx(0.6)
  groups = runs_lib.group(found)
  assert [len(g) for g in groups] == [2] * 6 + [1]      # two seeds per setting
  p20 = [r for r in found if r.name.startswith("plain20_")]
  means = [runs_lib.final_window_mean(r, "train_top1_error") for r in p20]
  assert runs_lib.mean_std(means) == pytest.approx((0.12, 0.028284), abs=1e-6)
  steps, values = runs_lib.mean_curve(p20, "eval_top1_error")
  assert steps == [500, 1000] and values == pytest.approx([0.7, 0.22])
  table = runs_lib.table(p20, ["eval_top1_error"], mean_seeds=True, percent=True)
  assert "| 2 (2) | 1000 | 22 ± 2.8 |" in table


def _findings(tmp_path, plain, resnet):
  root = degradation_sweep(tmp_path, plain_train=plain, resnet_train=resnet)
  return analysis.findings(analysis.summarize(analysis.load_runs(root)), "train")


def test_findings_judge_differences_against_the_seed_spread(tmp_path):
  # Each cell: seeds v and v + 0.04 -> std 0.028284; a difference of two cells is
  # within noise when |diff| <= sqrt(2) * 0.028284 = 0.04.
  f = _findings(tmp_path / "a", plain=(0.10, 0.20, 0.30), resnet=(0.09, 0.08, 0.07))
  assert f["plain"] == "holds"                 # plain-56 0.32 vs plain-20 0.12: +0.20
  assert f["resnet"] == "within noise"         # ResNet-56 0.09 vs ResNet-20 0.11: -0.02
  assert f["twins"][20][0] == "within noise"   # ResNet-20 0.11 vs plain-20 0.12: -0.01
  assert f["twins"][56][0] == "holds"          # 0.09 vs 0.32
  assert not f["both"]
  text = " ".join(f["sentences"])
  assert "+20.00 points, noise ±4.00: holds" in text
  assert "-2.00 points, noise ±4.00: within noise: no worse holds, better is not shown" in text
  f = _findings(tmp_path / "b", plain=(0.30, 0.40, 0.50), resnet=(0.15, 0.10, 0.05))
  assert f["resnet"] == "holds" and f["both"]
  f = _findings(tmp_path / "c", plain=(0.30, 0.40, 0.50), resnet=(0.05, 0.10, 0.15))
  assert f["resnet"] == "does not hold" and not f["both"]   # +0.10 > 0.04


def test_scale_line_states_data_width_iterations_epochs_and_seeds(tmp_path):
  root = degradation_sweep(tmp_path, plain_train=(0.10, 0.20, 0.30),
                           resnet_train=(0.09, 0.08, 0.07))
  for config_file in root.glob("*/config.json"):
    config = json.loads(config_file.read_text())
    config["data"] = {"source": "cifar10", "validation_size": 2000}
    config["train"]["batch_size"] = 128
    config["optim"] = {"learning_rate": 0.1}
    config["schedule"] = {"name": "cosine", "warmup_steps": 75, "warmup_lr": 0.01}
    config_file.write_text(json.dumps(config))
  line = analysis.scale(analysis.load_runs(root))
  # 1000 iterations x 128 images / 48,000 training images = 2.67 epochs.
  assert line == ("cifar10, 48,000 training images (2,000 held out); width 8; batch 128; "
                  "1000 iterations; 2.7 epochs; lr 0.1 cosine, 75-step warm-up from 0.01; "
                  "seeds: 2 at depth 20, 32, 56")
