"""Tests of bench/experiment.py (the generic runner and report) and bench/experiments.py."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
import experiments  # pylint: disable=g-import-not-at-top,wrong-import-position

EXP = dict(flagfile="omniglot.flags", steps=1500, seeds=(0, 1), common=["--eval_every=500"],
           baseline="vae", runs={"vae": ["--model=vae"], "km": ["--y_scale=0.3"]}, evals=[])


def _write_run(root, run, seed, losses, kl_z=None):
  d = os.path.join(root, "results", "toy", run, f"s{seed}")
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for i, loss in enumerate(losses):
      step = 500 * (i + 1)
      f.write(json.dumps({"split": "train", "step": step, "time": 60. * step / 500,
                          "loss": loss}) + "\n")
      f.write(json.dumps({"split": "test", "step": step, "loss": loss, "reconstruction": loss,
                          "kl_y": 1., "kl_z": (kl_z or [5.] * len(losses))[i]}) + "\n")


def _write_tests(root, run, seed, records):
  """A run of test records only: {"step": ..., other keys} each."""
  d = os.path.join(root, "results", "toy", run, f"s{seed}")
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps({"split": "test", **r}) + "\n")


def _gaussian(step, bpd, loss, scale=None):
  return {"step": step, "bits_per_dim": bpd, "loss": loss, "reconstruction": loss,
          "kl_y": 1., "kl_z": 5., **({"pixel_scale_min": scale[0], "pixel_scale_max": scale[1]}
                                      if scale else {})}


GAUSS = {**EXP, "steps": 1000, "metric": "bits_per_dim"}


def test_every_experiment_is_well_formed():
  for name, exp in experiments.EXPERIMENTS.items():
    experiment.metric_of(exp)   # a known metric; quality_nats only with nats
    assert exp["baseline"] in {**exp["runs"], **exp.get("references", {})}, name
    for row, source in exp.get("references", {}).items():
      other, run = source.split("/")
      assert run in experiments.EXPERIMENTS[other]["runs"], (name, row)
      assert set(exp["seeds"]) <= set(experiments.EXPERIMENTS[other]["seeds"]), (name, row)
    specs = experiment.run_specs(name, exp)
    assert len(specs) == len(exp["runs"]) * len(exp["seeds"])
    workdirs = [w for _, _, w, _ in specs]
    assert len(set(workdirs)) == len(workdirs), f"{name}: two runs share a workdir"


def test_run_specs_put_run_flags_after_common_and_seed_last():
  specs = experiment.run_specs("toy", EXP, steps=200)
  run, seed, workdir, argv = specs[-1]
  assert (run, seed, workdir) == ("km", 1, "runs/toy/km/s1")
  assert argv == ["train.py", "--flagfile=omniglot.flags", "--eval_every=500", "--y_scale=0.3",
                  "--workdir=runs/toy/km/s1", "--seed=1", "--train_steps=200"]
  assert experiment.model_of(["--model=vae"]) == "vae" and experiment.model_of([]) == "kanerva"


def test_summary_table_means_differences_and_dips(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  _write_run(tmp_path, "vae", 1, [160., 152., 144.])
  _write_run(tmp_path, "km", 0, [160., 140., 120.], kl_z=[20., 10., 5.])  # 5 < 0.7 * 10: dips
  _write_run(tmp_path, "km", 1, [160., 146., 130.], kl_z=[20., 10., 9.])  # peak from 1000: 10
  lines = experiment.summary_table("toy", EXP, experiment.load_runs("toy", EXP))
  assert "at step 1500" in lines[0]
  km = next(l for l in lines if l.startswith("| `km`"))
  cells = [c.strip() for c in km.strip("|").split("|")]
  assert cells[2:5] == ["120.00", "130.00", "125.00"]
  assert cells[5] == "-17.00"      # mean of (120 - 140, 130 - 144)
  assert cells[8] == "yes no"


def test_summary_table_in_bits_per_dim(tmp_path, monkeypatch):
  """metric bits_per_dim: bound cells, mean and difference in bits/dim, the mean in nats, and
  the decoder's pixel scale over the records up to the table's step and the row's seeds."""
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  # The report reads each key as written (these bits/dim are not computed from the nats).
  _write_tests(tmp_path, "vae", 0, [_gaussian(500, 5.5, -3000., (0.02, 0.5)),
                                    _gaussian(1000, 5.2, -3500., (0.01, 0.4))])
  _write_tests(tmp_path, "vae", 1, [_gaussian(500, 5.6, -2900.),   # records without the scale
                                    _gaussian(1000, 5.3, -3300.)])
  _write_tests(tmp_path, "km", 0, [_gaussian(500, 5.4, -3100., (0.0123456, 0.9)),
                                   _gaussian(1000, 5.0, -4000., (0.005, 0.6))])
  _write_tests(tmp_path, "km", 1, [_gaussian(500, 5.5, -3000., (0.04, 1.23456)),
                                   _gaussian(1000, 5.1, -3800., (0.02, 0.7))])
  loaded = experiment.load_runs("toy", GAUSS)
  lines = experiment.summary_table("toy", GAUSS, loaded)
  assert lines[0] == ("Test bound (dequantised eq. 12 / T in bits/dim; 64 test episodes of "
                      "T=32) at step 1000:")
  assert [c.strip() for c in lines[2].strip("|").split("|")] == [
      "run", "flags", "seed 0", "seed 1", "mean", "− vae", "nats",
      "pixel scale (min–max over training)", "KL(y)", "KL(z)", "KL(z) dips", "retrieval R²"]
  cells = {l.split("|")[1].strip(): [c.strip() for c in l.strip("|").split("|")]
           for l in lines[4:]}
  assert cells["`km`"][2:8] == ["5.000", "5.100", "5.050", "-0.200", "-3900.00", "0.005–1.235"]
  assert cells["`vae`"][2:8] == ["5.200", "5.300", "5.250", "", "-3400.00", "0.01–0.5"]
  km500 = next(l for l in experiment.summary_table("toy", GAUSS, loaded, 500)
               if l.startswith("| `km`"))
  assert [c.strip() for c in km500.strip("|").split("|")][2:8] == [
      "5.400", "5.500", "5.450", "-0.100", "-3050.00", "0.01235–1.235"]


def test_metric_must_be_known_and_quality_nats_stays_in_nats():
  assert experiment.metric_of(EXP) == "loss" and experiment.metric_of(GAUSS) == "bits_per_dim"
  with pytest.raises(ValueError, match="metric must be one of"):
    experiment.metric_of({**EXP, "metric": "bpd"})
  with pytest.raises(ValueError, match="quality_nats is in nats"):
    experiment.metric_of({**GAUSS, "quality_nats": 100})


def test_curves_plot_bits_per_dim_without_the_nats_clamp(tmp_path, monkeypatch):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  _write_tests(tmp_path, "km", 0, [_gaussian(500, 400., -3000.), _gaussian(1000, 300., -3500.)])
  figures, close = [], plt.close
  monkeypatch.setattr(plt, "close", figures.append)   # keeps the figure to look at
  path = tmp_path / "curves.png"
  experiment.plot_curves("toy", GAUSS, experiment.load_runs("toy", GAUSS), str(path))
  assert path.exists()
  axes = figures[0].axes
  assert [ax.get_title() for ax in axes] == ["test bits/dim", "test reconstruction",
                                             "test kl_y", "test kl_z"]
  assert axes[0].get_ylim()[1] >= 400.   # no clamp at 250 (that is for nats)
  assert axes[1].get_ylim()[1] < 0.      # the other panels stay in nats
  close(figures[0])


def test_report_replaces_only_its_marked_section(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  _write_run(tmp_path, "km", 0, [160., 140., 120.])
  md = tmp_path / "RESULTS.md"
  md.write_text("# Results\n\nPeople's prose.\n")
  monkeypatch.setitem(experiment.EXPERIMENTS, "toy", EXP)
  experiment.write_report("toy", EXP, str(md))
  experiment.write_report("toy", EXP, str(md))
  text = md.read_text()
  assert text.startswith("# Results\n\nPeople's prose.\n")
  assert text.count("<!-- experiment:toy -->") == 1 and text.count("| `km`") == 1
  assert (tmp_path / "results" / "toy" / "curves.png").exists()


def test_minutes_until_leaves_out_pauses():
  train = [{"step": s, "time": t} for s, t in ((100, 0.), (200, 60.), (300, 5000.), (400, 5060.))]
  tests = [{"step": 200, "loss": 150.}, {"step": 400, "loss": 99.}]
  assert experiment.minutes_until(train, tests, lambda r: r["loss"] < 100) == pytest.approx(2.)
  assert experiment.minutes_until(train, tests, lambda r: r["loss"] < 50) is None


def test_ship_copies_the_newest_checkpoint_and_the_run_files(tmp_path, monkeypatch):
  wd = tmp_path / "runs" / "toy" / "km" / "s0"
  (wd / "checkpoints").mkdir(parents=True)
  (wd / "config.json").write_text("{}")
  (wd / "metrics.jsonl").write_text("")
  for step in (2, 4):
    for ext in ("index", "data-00000-of-00001"):
      (wd / "checkpoints" / f"ckpt-{step}.{ext}").write_text(str(step))
  (wd / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
  out, step = experiment.ship("toy", EXP, "km", 0, "toy_km", root=str(tmp_path))
  assert step == 4
  assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
      "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
  assert os.path.exists(os.path.join(out, "config.json"))
  with pytest.raises(SystemExit, match="no run 'nope'"):
    experiment.ship("toy", EXP, "nope", 0, "x", root=str(tmp_path))


def test_ship_refuses_an_export_older_than_the_newest_checkpoint(tmp_path):
  wd = tmp_path / "runs" / "toy" / "km" / "s0"
  (wd / "checkpoints").mkdir(parents=True)
  (wd / "export").mkdir()
  (wd / "config.json").write_text("{}")
  (wd / "metrics.jsonl").write_text("")
  (wd / "export" / "saved_model.pb").write_text("step 2")
  for ext in ("index", "data-00000-of-00001"):
    (wd / "checkpoints" / f"ckpt-4.{ext}").write_text("4")
  (wd / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
  os.utime(wd / "export" / "saved_model.pb", (1000, 1000))   # exported before step 4
  with pytest.raises(SystemExit, match="older than its newest checkpoint.*--train_steps=4"):
    experiment.ship("toy", EXP, "km", 0, "toy_km", root=str(tmp_path))
  assert not (tmp_path / "pretrained" / "toy_km").exists()
  os.utime(wd / "export" / "saved_model.pb")                 # exported after it: shipped
  out, _ = experiment.ship("toy", EXP, "km", 0, "toy_km", root=str(tmp_path))
  assert open(os.path.join(out, "export", "saved_model.pb")).read() == "step 2"


def test_ship_weights_only_writes_a_checkpoint_eval_restores(tmp_path):
  """--weights_only: the model's variables without Adam's slots, restored by
  runs.restore_model (what eval.py uses) to the same weights, at the same step."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import kanerva_tf as kt  # pylint: disable=g-import-not-at-top
  from kanerva_tf import runs  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "runs" / "toy" / "km" / "s0"
  config = kt.ModelConfig(image_shape=(8, 8, 1), code_size=4, memory_size=3, address_size=2,
                          num_filters=2, y_size=2, mlp_hidden_size=4, episode_length=2)
  model = runs.build_model("kanerva", config)
  model(np.zeros((1, 2, 8, 8, 1), np.float32))
  runs.save_run_config(str(wd), {"model_type": "kanerva", "model": config.to_dict()})
  (wd / "metrics.jsonl").write_text("")
  optimizer = keras.optimizers.Adam()
  optimizer.build(model.trainable_variables)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(
      model_variables=runs.checkpointed_variables(model), optimizer=optimizer,
      step=tf.Variable(7, dtype=tf.int64)), str(wd / "checkpoints"), max_to_keep=2)
  manager.save(checkpoint_number=7)
  out, step = experiment.ship("toy", EXP, "km", 0, "toy_km", root=str(tmp_path),
                              weights_only=True)
  assert step == 7
  full = os.path.getsize(wd / "checkpoints" / "ckpt-7.data-00000-of-00001")
  small = os.path.getsize(os.path.join(out, "checkpoints", "ckpt-7.data-00000-of-00001"))
  assert small < 0.5 * full
  restored, _, restored_step = runs.restore_model(out)
  assert restored_step == 7
  for a, b in zip(model.get_weights(), restored.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_time_to_quality_rows(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  _write_run(tmp_path, "km", 0, [165., 99., 90.])   # passes the VAE and 100 nats at step 1000
  lines = experiment.time_to_quality(EXP, experiment.load_runs("toy", EXP), 100)
  row = next(l for l in lines if l.startswith("| `km`"))
  assert [c.strip() for c in row.strip("|").split("|")] == ["`km`", "0", "1000", "1.0",
                                                             "1000", "1.0"]


def test_headline_table_uses_the_last_step_every_seed_reached(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  exp = {**EXP, "headline": dict(title="Toy", paper={"km": 68.3, "vae": 112.7})}
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  _write_run(tmp_path, "km", 0, [160., 140., 120.])
  _write_run(tmp_path, "km", 1, [160., 146.])          # stopped at step 1000
  lines = experiment.headline_table({"toy": exp, "other": EXP})
  km = next(l for l in lines if "`km`" in l)
  cells = [c.strip() for c in km.strip("|").split("|")]
  assert cells[0] == "Toy" and cells[3:5] == ["0", "1500"]
  assert cells[5] == "120.00 (seed 1: 146.00 at step 1000)"
  assert cells[6:] == ["120.00", "nats", "68.3"]
  assert len(lines) == 4  # header, rule, km, vae; EXP has no headline
  assert lines[0] == ("| experiment | run | flags | seeds | step | test bound per seed | mean | "
                      "unit | paper |")


def test_headline_table_reads_a_reference_row_from_another_experiments_results(
    tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  monkeypatch.setitem(experiment.EXPERIMENTS, "toy", EXP)
  _write_run(tmp_path, "km", 0, [160., 140., 120.])      # results/toy/km/s0
  exp = {**EXP, "references": {"km_before": "toy/km"}, "runs": {},
         "headline": dict(title="Later", paper={"km_before": 68.3})}
  lines = experiment.headline_table({"later": exp})
  cells = [c.strip() for c in lines[2].strip("|").split("|")]
  assert cells == ["Later", "`km_before`", "`--y_scale=0.3`", "0", "1500", "120.00", "120.00",
                   "nats", "68.3"]


def test_headline_table_in_bits_per_dim_without_the_papers_number(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  exp = {**GAUSS, "headline": dict(title="Gauss", paper={"km": None, "vae": 112.7})}
  _write_tests(tmp_path, "km", 0, [_gaussian(500, 5.4, -3100.), _gaussian(1000, 5.0, -4000.)])
  _write_tests(tmp_path, "km", 1, [_gaussian(500, 5.5, -3000.)])   # stopped at step 500
  lines = experiment.headline_table({"toy": exp})
  km = [c.strip() for c in next(l for l in lines if "`km`" in l).strip("|").split("|")]
  assert km[3:] == ["0", "1000", "5.000 (seed 1: 5.500 at step 500)", "5.000", "bits/dim", "—"]
  assert len(lines) == 3  # the VAE has no results


def test_write_report_fills_the_headline_markers(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  exp = {**EXP, "headline": dict(title="Toy", paper={"vae": 112.7})}
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  md = tmp_path / "RESULTS.md"
  md.write_text("# R\n<!-- headline -->\nold\n<!-- /headline -->\nprose\n")
  experiment.write_report("toy", exp, str(md), experiments={"toy": exp})
  text = md.read_text()
  assert "old" not in text and "| Toy | `vae` |" in text and "prose" in text
  assert text.index("<!-- headline -->") < text.index("<!-- experiment:toy -->")


def test_references_read_another_experiments_results(tmp_path, monkeypatch):
  """A `references` row is read from the other experiment's results/ and can be the
  baseline; it is not trained (no run spec)."""
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  monkeypatch.setitem(experiment.EXPERIMENTS, "toy", EXP)
  _write_run(tmp_path, "vae", 0, [160., 150., 140.])
  small = dict(EXP, seeds=(0,), baseline="vae", references={"vae": "toy/vae"},
               runs={"b8": ["--batch_size=8"]})
  d = os.path.join(tmp_path, "results", "small", "b8", "s0")
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for step, loss in ((500, 170.), (1000, 150.), (1500, 130.)):
      f.write(json.dumps({"split": "test", "step": step, "loss": loss}) + "\n")
  assert [r for r, *_ in experiment.run_specs("small", small)] == ["b8"]
  lines = experiment.summary_table("small", small, experiment.load_runs("small", small))
  vae = next(l for l in lines if l.startswith("| `vae`"))
  assert "results of `toy/vae`" in vae and "140.00" in vae
  b8 = [c.strip() for c in next(l for l in lines if l.startswith("| `b8`")).strip("|").split("|")]
  assert b8[2:5] == ["130.00", "130.00", "-10.00"]


def test_convergence_compares_smoothed_bounds_a_window_apart():
  tests = [{"step": 500 * i, "loss": 100. - i} for i in range(1, 31)]   # 1 nat per 500 steps
  c = experiment.convergence(tests, window=10000)
  assert c["step"] == 15000 and c["earlier_step"] == 5000
  assert c["bound"] == pytest.approx(71.) and c["earlier_bound"] == pytest.approx(91.)
  assert c["improvement"] == pytest.approx(20.)
  assert experiment.convergence(tests[:10], window=10000) is None   # 5,000 steps < window


def test_convergence_table_marks_a_flat_curve_converged(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "REPO", str(tmp_path))
  exp = {**EXP, "convergence": {"window": 1000, "nats": 0.5}}
  _write_run(tmp_path, "vae", 0, [150., 150.2, 149.9, 150.1, 150.])   # flat: converged
  _write_run(tmp_path, "km", 0, [120., 110., 100., 90., 80.])        # still falling
  _write_run(tmp_path, "km", 1, [120.])                              # shorter than the window
  lines = experiment.convergence_table(exp, experiment.load_runs("toy", exp))
  rows = {tuple(c.strip() for c in l.strip("|").split("|")[:2]): l for l in lines
          if l.startswith("| `")}
  assert rows[("`vae`", "0")].rstrip(" |").endswith("yes")
  assert rows[("`km`", "0")].rstrip(" |").endswith("no")
  assert "shorter than the window" in rows[("`km`", "1")]



def test_threads_per_job_splits_the_cores_and_leaves_one_job_the_default():
  assert experiment.threads_per_job(1, cores=2) is None
  assert experiment.threads_per_job(2, cores=2) == 1
  assert experiment.threads_per_job(2, cores=8) == 4
  assert experiment.threads_per_job(4, cores=2) == 1
