"""Tests for the report helpers of bench/reproduce_omniglot.py (pure Python, no training)."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "reproduce_omniglot.py")


@pytest.fixture(scope="module")
def rep():
  spec = importlib.util.spec_from_file_location("reproduce_omniglot", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _test(step, loss, kl_z, kl_y=0.5):
  return {"split": "test", "step": step, "loss": loss, "reconstruction": loss - kl_z - kl_y,
          "kl_y": kl_y, "kl_z": kl_z}


def test_training_hours_leaves_out_pauses(rep):
  times = [0., 20., 40., 40. + 3600., 40. + 3620.]  # a one-hour pause between 40 and 3640
  records = [{"split": "train", "step": 50 * i, "time": t} for i, t in enumerate(times)]
  records.append({"split": "test", "step": 100, "time": 10_000.})  # test records are ignored
  assert rep.training_hours(records) == pytest.approx(60. / 3600.)
  assert rep.training_hours(records, max_gap=4000.) == pytest.approx(3660. / 3600.)


def test_kl_z_dip_detects_a_fall_from_the_peak(rep):
  rising = [_test(s, 200., kl) for s, kl in ((1000, 5.), (1500, 10.), (2000, 12.))]
  assert rep.kl_z_dip(rising) == (False, 2000, 12., 2000, 12.)
  dipping = rising + [_test(3000, 190., 3.)]
  assert rep.kl_z_dip(dipping) == (True, 2000, 12., 3000, 3.)
  small_fall = rising + [_test(3000, 190., 10.)]  # 17 % below the peak: not a dip
  assert rep.kl_z_dip(small_fall)[0] is False
  # A fall from where initialisation put KL(z), before step 1000, is not a dip.
  early_fall = [_test(250, 250., 18.), _test(500, 220., 12.)] + rising
  assert rep.kl_z_dip(early_fall) == (False, 2000, 12., 2000, 12.)
  assert rep.kl_z_dip(early_fall[:2])[0] is True  # no test point from step 1000 on: all count


def test_comparison_rows_and_verdict(rep):
  steps = list(range(250, 5001, 250)) + [5100]
  curves = {"kanerva": [_test(s, 100. + s / 100., 1.) for s in steps],
            "vae": [_test(s, 110., 2.) for s in steps if s != 500]}
  lines, last = rep._comparison(curves, every=1000, dense_until=1000)  # pylint: disable=protected-access
  shown = [int(line.split("|")[1]) for line in lines[2:]]
  # Every common step up to 1000 (500 is missing from the VAE), then multiples of 1000, the last.
  assert shown == [250, 750, 1000, 2000, 3000, 4000, 5000, 5100]
  assert last == (5100, 151., 110.)
  assert lines[-1].endswith("| -41.00 |")  # VAE minus KM


def test_seed_dirs(rep, tmp_path):
  assert rep.seed_dir("runs", 0) == "runs"
  assert rep.seed_dir("runs", 2) == os.path.join("runs", "seed2")
  for name in ("seed3", "seed12", "seedx", "omniglot_kanerva"):
    (tmp_path / name).mkdir()
  assert set(rep.extra_seeds(str(tmp_path))) >= {3, 12}
  assert not {"x", 0} & set(rep.extra_seeds(str(tmp_path)))


def test_seed_table_compares_at_the_last_common_step(rep):
  def pair(km, vae, last):
    steps = range(250, last + 1, 250)
    return {"kanerva": [_test(s, km + 1000. / s, 2.) for s in steps],
            "vae": [_test(s, vae + 1000. / s, 3.) for s in steps]}
  table, step = rep.seed_table({0: pair(150., 135., 2000), 1: pair(140., 136., 1000)})
  assert step == 1000
  assert table[2].startswith("| 0 | 151.00 |") and table[2].endswith("| -15.00 |")
  assert table[3].startswith("| 1 | 141.00 |") and table[3].endswith("| -4.00 |")
  assert table[4] == "| mean | | | | | | -9.50 (range 11.00) |"
  assert rep.seed_table({0: pair(1., 1., 250), 1: {"kanerva": [], "vae": []}}) == ([], None)


def test_up_to_date_needs_same_checkpoint_and_flags(rep, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  eval_json = tmp_path / "eval.json"
  flags = ["--workdir=run", "--num_batches=4"]
  assert not rep.up_to_date(str(eval_json), str(workdir), flags)  # no eval.json
  eval_json.write_text(json.dumps({"checkpoint": "run/checkpoints/ckpt-500",
                                   "command_line": {"argv": ["eval.py"] + flags}}))
  assert not rep.up_to_date(str(eval_json), str(workdir), flags)  # no checkpoint file
  (workdir / "checkpoints" / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-500"\nall_model_checkpoint_paths: "ckpt-250"\n')
  assert rep.latest_checkpoint_name(str(workdir)) == "ckpt-500"
  assert rep.up_to_date(str(eval_json), str(workdir), flags)
  assert not rep.up_to_date(str(eval_json), str(workdir), flags + ["--nofigures"])
  (workdir / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-750"\n')
  assert not rep.up_to_date(str(eval_json), str(workdir), flags)  # a newer checkpoint


def test_compare_bounds_uses_two_standard_errors(rep):
  main = {"loss": 150., "loss_stderr": 1.2}
  assert rep.compare_bounds({"loss": 145.9, "loss_stderr": 1.6}, main) == "better than"
  assert rep.compare_bounds({"loss": 154.1, "loss_stderr": 1.6}, main) == "worse than"
  assert rep.compare_bounds({"loss": 151.3, "loss_stderr": 1.6}, main) == (
      "level, within 4.0 nats, with")  # 2 * sqrt(1.2^2 + 1.6^2) = 4.0
  assert rep.compare_bounds({"loss": 150.5}, {"loss": 150.}) == "worse than"  # no stderr: 0


def test_side_run_curves_reads_each_run_once_with_its_own_vae_if_any(rep, tmp_path, monkeypatch):
  """A side run with both models, one with the Kanerva Machine only (no "vae" entry), and one
  not run (absent); each run's metrics are copied to results/<name>/ under the repository."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(rep, "REPO", str(tmp_path / "repo"))
  runs = tmp_path / "runs"
  for name, model, loss in (("he_normal", "kanerva", 150.), ("he_normal", "vae", 140.),
                            ("prior_loc", "kanerva", 151.)):
    path = runs / name / f"omniglot_{model}"
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text(json.dumps(_test(250, loss, 10.)) + "\n")
  monkeypatch.setattr(rep, "SHARED_VAE", {"prior_loc": "he_normal"})
  side = rep.side_run_curves(argparse.Namespace(runs_dir=str(runs)))
  assert set(side) == {"he_normal", "prior_loc"}
  assert side["prior_loc"]["vae"] is side["he_normal"]["vae"]  # shared, as SHARED_VAE says
  monkeypatch.setattr(rep, "SHARED_VAE", {})
  side = rep.side_run_curves(argparse.Namespace(runs_dir=str(runs)))
  assert set(side["he_normal"]) == {"kanerva", "vae"} and set(side["prior_loc"]) == {"kanerva"}
  assert side["he_normal"]["vae"][0]["loss"] == 140.
  assert (tmp_path / "repo" / "results" / "prior_loc" / "omniglot_kanerva_metrics.jsonl").exists()


def test_side_run_line_compares_with_its_own_vae_when_it_has_one(rep):
  main_km = {s: _test(s, 150. - s / 1000., 19.) for s in (4750, 5000)}
  main_vae = {s: _test(s, 136., 27.) for s in (4750, 5000)}
  km = [_test(s, 131., kl) for s, kl in ((1000, 12.), (4750, 25.), (5000, 26.))]
  plain = rep._side_run_line({"kanerva": km}, "`--x`", main_vae, main_km)  # pylint: disable=protected-access
  assert len(plain) == 1 and "at step 5000 131.00 nats vs the VAE's 136.00" in plain[0]
  assert "better than the main run" in plain[0] and "shows no dip" in plain[0]
  own = [_test(s, 125., 30.) for s in (1000, 4750)]  # the side run's own VAE stops at 4750
  line = rep._side_run_line({"kanerva": km, "vae": own}, "`--x`", main_vae, main_km)[0]  # pylint: disable=protected-access
  assert "at step 4750 the Kanerva Machine scores 131.00 nats vs that VAE's 125.00" in line
  assert "(worse than it; the main pair at this step: 145.25 vs 136.00)" in line
  assert "(side run below, with a VAE trained with the same switch)" in line
  shared = rep._side_run_line({"kanerva": km, "vae": own}, "`--x`", main_vae, main_km,  # pylint: disable=protected-access
                              "the lr3e-4 side run's VAE")[0]
  assert "(side run below, with the lr3e-4 side run's VAE)" in shared
  assert rep._side_run_line({"kanerva": km[:1]}, "`--x`", main_vae, main_km) == []  # pylint: disable=protected-access


def test_sweep_table_and_figure_links(rep):
  sweep = {"episode_sizes": [16, 32], "class_counts": ["2", "all"],
           "loss": {"2": [90.93, None], "all": [91.5, 95.174]}}
  assert rep.sweep_table(sweep)[2:] == ["| classes | T=16 | T=32 |", "|---|---|---|",
                                        "| 2 | 90.93 | — |", "| all | 91.50 | 95.17 |"]
  links = rep.figure_links("results/x")
  assert links.startswith("Figures: [reconstructions](results/x/reconstructions.png), ")
  assert links.count("](results/x/") == len(rep.FIGURES)
