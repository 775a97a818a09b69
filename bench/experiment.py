r"""One tool for every experiment of `bench/experiments.py`: train, resume, evaluate, report.

  python bench/experiment.py NAME --train [--parallel=2] [--data_dir=DIR] [--steps=N]
  python bench/experiment.py NAME --eval          # eval.py on each run's last checkpoint
  python bench/experiment.py NAME --report        # tables + curves into RESULTS.md
  python bench/experiment.py NAME --ship=RUN:SEED:DEST   # run -> pretrained/DEST

Training runs `train.py --flagfile=<flagfile> <common> <run flags> --seed=S --train_steps=N`
for every run and seed, at most `--parallel` at once, each with its share of the cores
(`threads_per_job`); re-running resumes.
Each run's metrics.jsonl and config.json (and eval.json) are copied to
`results/<NAME>/<run>/s<seed>/`, which the report reads, so a report regenerates after
`runs/` is gone. The report writes no sentence about a particular run: tables and a figure
between `<!-- experiment:NAME -->` markers in RESULTS.md; people write the prose around them.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import EXPERIMENTS  # pylint: disable=g-import-not-at-top,wrong-import-position

TERMS = ("loss", "reconstruction", "kl_y", "kl_z")
# An experiment's `metric`: the test record's key of its bound -> (unit, decimals).
METRICS = {"loss": ("nats", 2), "bits_per_dim": ("bits/dim", 3)}


# ----------------------------------------------------------------------------- runs
def model_of(flags):
  """The --model of a run's flags (train.py's default: kanerva)."""
  models = [f.split("=", 1)[1] for f in flags if f.startswith("--model=")]
  return models[-1] if models else "kanerva"


def run_specs(name, exp, steps=None, runs=None, seeds=None):
  """[(run, seed, workdir, train.py argv)] of an experiment, in table order; `runs` and
  `seeds` (optional collections) keep only those."""
  unknown = set(runs or ()) - set(exp["runs"])
  if unknown:
    raise SystemExit(f"--runs: {sorted(unknown)} not among {name}'s runs {list(exp['runs'])}")
  specs = []
  for run, flags in exp["runs"].items():
    if runs and run not in runs:
      continue
    for seed in exp["seeds"]:
      if seeds and seed not in seeds:
        continue
      workdir = exp.get("workdir", "runs/{experiment}/{run}/s{seed}").format(
          experiment=name, run=run, seed=seed, model=model_of(flags))
      argv = ["train.py", f"--flagfile={exp['flagfile']}", *exp.get("common", []), *flags,
              f"--workdir={workdir}", f"--seed={seed}",
              f"--train_steps={steps or exp['steps']}"]
      specs.append((run, seed, workdir, argv))
  return specs


def results_dir(name, run, seed):
  return os.path.join(REPO, "results", name, run, f"s{seed}")


def copy_results(name, run, seed, workdir):
  """Copies the run's metrics.jsonl, config.json and eval.json (those present) to results/."""
  out = results_dir(name, run, seed)
  os.makedirs(out, exist_ok=True)
  for path in ("metrics.jsonl", "config.json", os.path.join("eval", "eval.json")):
    src = os.path.join(REPO, workdir, path)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(out, os.path.basename(path)))


def threads_per_job(parallel, cores=None):
  """TF's intra-op thread count for each of `parallel` jobs: the cores split between them, or
  None (TF's default, every core) for one job alone. On 2 cores (2026-12-03) the Omniglot KM
  made ~4.5 steps/s with one thread and ~8 with TF's default threads, so `--parallel=1` no
  longer leaves a core idle, and two one-thread jobs do about as much as one two-thread job."""
  cores = cores or os.cpu_count() or 1
  return None if parallel == 1 else max(1, cores // parallel)


def _launch(argv, workdir, data_dir, log_name, threads):
  argv = [sys.executable, *argv] + ([f"--data_dir={data_dir}"] if data_dir else [])
  os.makedirs(os.path.join(REPO, workdir), exist_ok=True)
  log = open(os.path.join(REPO, workdir, log_name), "a")
  env = dict(os.environ)
  if threads is not None:
    env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
  print("running:", " ".join(argv[1:]), flush=True)
  return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_all(jobs, parallel):
  """Runs (key, start) jobs, at most `parallel` at once; returns {key: exit code}."""
  pending, running, codes = list(jobs), [], {}
  while pending or running:
    while pending and len(running) < parallel:
      key, start = pending.pop(0)
      running.append((key, start()))
    time.sleep(2)
    for key, proc in list(running):
      if proc.poll() is not None:
        codes[key] = proc.returncode
        running.remove((key, proc))
  return codes


def latest_step(workdir):
  """Step of the newest checkpoint of a run (from `checkpoints/checkpoint`), or None."""
  path = os.path.join(workdir, "checkpoints", "checkpoint")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    for line in f:
      if line.startswith("model_checkpoint_path:"):
        return int(line.split(":", 1)[1].strip().strip('"').rsplit("-", 1)[-1])
  return None


def _run_and_collect(name, specs, jobs, parallel, what, log_name):
  """Runs the jobs, copies every run's files to results/ (failed or not), then fails loudly
  if any job failed."""
  codes = run_all(jobs, parallel)
  for run, seed, workdir, _ in specs:
    copy_results(name, run, seed, workdir)
  failed = {k: c for k, c in codes.items() if c}
  if failed:
    raise SystemExit(f"{what} failed (exit codes {failed}); see <workdir>/{log_name}")


def _selected(name, exp, args):
  return run_specs(name, exp, args.steps, args.runs, args.seeds)


def train(name, exp, args):
  specs = _selected(name, exp, args)
  jobs = [((run, seed), (lambda a=argv, w=workdir: _launch(a, w, args.data_dir, "train.log",
                                                          threads_per_job(args.parallel))))
          for run, seed, workdir, argv in specs]
  _run_and_collect(name, specs, jobs, args.parallel, "training", "train.log")


def evaluate(name, exp, args):
  if not exp.get("evals"):
    return
  specs = _selected(name, exp, args)
  jobs = []
  for run, seed, workdir, _ in specs:
    latest = latest_step(os.path.join(REPO, workdir))
    if latest is None or latest < (args.steps or exp["steps"]):
      print(f"skipped {run} s{seed}: no checkpoint of step {args.steps or exp['steps']} in "
            f"{workdir} (train first)", flush=True)
      continue
    done = os.path.join(REPO, workdir, "eval", "eval.json")
    if os.path.exists(done) and not args.reeval:
      with open(done) as f:
        ev = json.load(f)
      argv = [a for a in ev.get("command_line", {}).get("argv", [])[1:]
              if not a.startswith("--data_dir=")]
      if ev.get("step") == latest and argv == [
          f"--workdir={workdir}", f"--out_dir={workdir}/eval", *exp["evals"]]:
        continue  # up to date: the newest checkpoint with the same flags
    argv = ["eval.py", f"--workdir={workdir}", f"--out_dir={workdir}/eval", *exp["evals"]]
    jobs.append(((run, seed), lambda a=argv, w=workdir: _launch(a, w, args.data_dir, "eval.log",
                                                             threads_per_job(args.parallel))))
  _run_and_collect(name, specs, jobs, args.parallel, "evaluation", "eval.log")


def _write_weights_only(src, out_dir, step):
  """Writes the model variables of `src`'s newest checkpoint, without the optimizer's slots,
  as `out_dir/ckpt-<step>` (what `runs.restore_model`, hence eval.py, reads)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kanerva_tf import runs  # pylint: disable=g-import-not-at-top
  model, _, restored_step = runs.restore_model(src)
  if restored_step != step:
    raise SystemExit(f"--ship: {src}'s newest checkpoint is step {step} but step "
                     f"{restored_step} restored; check the run's checkpoints.")
  tf.train.Checkpoint(model_variables=runs.checkpointed_variables(model),
                      step=tf.Variable(step, dtype=tf.int64)).write(
                          os.path.join(out_dir, f"ckpt-{step}"))


def ship(name, exp, run, seed, dest, root=None, weights_only=False):
  """Copies a run to `pretrained/<dest>` as a run directory eval.py and train.py accept:
  config.json, metrics.jsonl, the newest checkpoint (with the optimizer's slots, so a later
  session can resume training it; `weights_only`: the model's variables alone, a third of
  the size, which eval.py reads but training cannot resume from) and the SavedModel export
  when there is one. An export older than the newest checkpoint (a run resumed and
  checkpointed after it exported) is refused, not shipped beside another step's weights."""
  root = root or REPO
  specs = {(r, s): w for r, s, w, _ in run_specs(name, exp)}
  if (run, seed) not in specs:
    raise SystemExit(f"--ship: {name} has no run {run!r} with seed {seed}; runs: "
                     f"{sorted(exp['runs'])}, seeds {list(exp['seeds'])}.")
  src = os.path.join(root, specs[(run, seed)])
  step = latest_step(src)
  if step is None:
    raise SystemExit(f"--ship: {src} has no checkpoint; train it first.")
  export = os.path.join(src, "export", "saved_model.pb")
  index = os.path.join(src, "checkpoints", f"ckpt-{step}.index")
  if os.path.exists(export) and os.path.getmtime(export) < os.path.getmtime(index):
    raise SystemExit(
        f"--ship: {src}/export is older than its newest checkpoint (step {step}), so it "
        f"would ship another step's weights. Export at step {step} first: re-run the run's "
        f"train.py command with --train_steps={step} (it exports at the end), then --ship.")
  out = os.path.join(root, "pretrained", dest)
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, "checkpoints"))
  for f in ("config.json", "metrics.jsonl"):
    shutil.copyfile(os.path.join(src, f), os.path.join(tmp, f))
  ckpt = os.path.join(src, "checkpoints")
  if weights_only:
    _write_weights_only(src, os.path.join(tmp, "checkpoints"), step)
  else:
    for f in os.listdir(ckpt):
      if f.startswith(f"ckpt-{step}."):
        shutil.copyfile(os.path.join(ckpt, f), os.path.join(tmp, "checkpoints", f))
  with open(os.path.join(tmp, "checkpoints", "checkpoint"), "w") as f:
    f.write(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')
  if os.path.isdir(os.path.join(src, "export")):
    shutil.copytree(os.path.join(src, "export"), os.path.join(tmp, "export"))
  shutil.rmtree(out, ignore_errors=True)   # replaced only once the new copy is complete
  os.replace(tmp, out)
  return out, step


# ----------------------------------------------------------------------------- report
def read_records(path):
  """Records of a metrics.jsonl, the last of each (split, step) (a resumed run may repeat)."""
  with open(path) as f:
    latest = {}
    for line in f:
      r = json.loads(line)
      latest[(r["split"], r["step"])] = r
  return sorted(latest.values(), key=lambda r: r["step"])


def table_rows(name, exp):
  """[(row name, flags, results name, results run)] of an experiment's tables and figure:
  first its `references` (rows read from another experiment's results, not trained here),
  then its own runs."""
  rows = []
  for row, source in exp.get("references", {}).items():
    other, other_run = source.split("/")
    rows.append((row, EXPERIMENTS[other]["runs"][other_run], other, other_run))
  return rows + [(run, flags, name, run) for run, flags in exp["runs"].items()]


def load_runs(name, exp):
  """{(row, seed): {"test": [records], "train": [records], "eval": dict or None}} of the
  rows (`table_rows`) whose metrics were copied to results/."""
  loaded = {}
  for run, _, source, source_run in table_rows(name, exp):
    for seed in exp["seeds"]:
      d = results_dir(source, source_run, seed)
      if not os.path.exists(os.path.join(d, "metrics.jsonl")):
        continue
      records = read_records(os.path.join(d, "metrics.jsonl"))
      ev = None
      if os.path.exists(os.path.join(d, "eval.json")):
        with open(os.path.join(d, "eval.json")) as f:
          ev = json.load(f)
      loaded[(run, seed)] = {"test": [r for r in records if r["split"] == "test"],
                             "train": [r for r in records if r["split"] == "train"],
                             "eval": ev}
  return loaded


def kl_z_dip(tests, drop=0.3, after=1000):
  """Whether the test KL(z) ends more than `drop` (a fraction) below its peak from step
  `after` on (the paper's dip; a fall from the initial value is not one)."""
  later = [r for r in tests if r["step"] >= after and "kl_z" in r]
  if not later:
    return False
  return later[-1]["kl_z"] < (1. - drop) * max(r["kl_z"] for r in later)


def at_step(tests, step):
  for r in tests:
    if r["step"] == step:
      return r
  return None


def minutes_until(train, tests, threshold_fn):
  """Wall-clock minutes of training (pauses > 10 min left out) until the first test record
  for which threshold_fn(record) holds, or None."""
  hit = next((r for r in tests if threshold_fn(r)), None)
  if hit is None:
    return None
  times = [r["time"] for r in train if "time" in r and r["step"] <= hit["step"]]
  return sum(b - a for a, b in zip(times, times[1:]) if b - a < 600.) / 60.


def _mean(values):
  return sum(values) / len(values) if values else float("nan")


def metric_of(exp):
  """The experiment's `metric` (default "loss"); ValueError for an unknown one, or for
  `quality_nats` beside another metric (time to quality is in nats)."""
  metric = exp.get("metric", "loss")
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {sorted(METRICS)}; got {metric!r}")
  if metric != "loss" and exp.get("quality_nats"):
    raise ValueError(f"quality_nats is in nats; the experiment's metric is {metric!r}")
  return metric


def _fmt(value, metric, sign=""):
  return f"{value:{sign}.{METRICS[metric][1]}f}"


def scale_range(tests, step):
  """(min of pixel_scale_min, max of pixel_scale_max) over the test records up to `step`,
  or None when they have no such keys (a Bernoulli run, or records older than the keys)."""
  recs = [r for r in tests if r["step"] <= step and "pixel_scale_min" in r]
  if not recs:
    return None
  return min(r["pixel_scale_min"] for r in recs), max(r["pixel_scale_max"] for r in recs)


def summary_table(name, exp, loaded, step=None):
  """Markdown rows: each run's test bound per seed at `step` (default: the experiment's
  steps, else the last step every run reached) in the experiment's metric, mean, difference
  from the baseline (same seeds), for bits/dim the mean in nats and the range of the decoder's
  pixel scale, then KL(y), KL(z), KL(z) dip per seed, retrieval R^2."""
  seeds = exp["seeds"]
  metric = metric_of(exp)
  if step is None:
    lasts = [v["test"][-1]["step"] for v in loaded.values() if v["test"]]
    step = min(lasts + [exp["steps"]]) if lasts else exp["steps"]
  base = exp.get("baseline")
  scales = metric != "loss" and any("pixel_scale_min" in r for v in loaded.values()
                                    for r in v["test"])
  head = (["run", "flags"] + [f"seed {s}" for s in seeds] +
          ["mean", f"− {base}" if base else ""] +
          (["nats"] if metric != "loss" else []) +
          (["pixel scale (min–max over training)"] if scales else []) +
          ["KL(y)", "KL(z)", "KL(z) dips", "retrieval R²"])
  bound = ("eq. 12 / T, nats" if metric == "loss"
           else f"dequantised eq. 12 / T in {METRICS[metric][0]}")
  lines = [f"Test bound ({bound}; 64 test episodes of T=32) at step {step}:", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  base_losses = {s: at_step(loaded[(base, s)]["test"], step)
                 for s in seeds if (base, s) in loaded} if base else {}
  for run, flags, source, source_run in table_rows(name, exp):
    rec = {s: at_step(loaded[(run, s)]["test"], step) for s in seeds if (run, s) in loaded}
    rec = {s: r for s, r in rec.items() if r is not None}
    cells = [f"`{run}`", " ".join(f"`{f}`" for f in flags) or "(flagfile)"]
    if source != name:
      cells[1] += f" (results of `{source}/{source_run}`)"
    cells += [_fmt(rec[s][metric], metric) if s in rec else "—" for s in seeds]
    cells.append(_fmt(_mean([r[metric] for r in rec.values()]), metric) if rec else "—")
    diffs = [rec[s][metric] - base_losses[s][metric] for s in rec
             if base_losses.get(s) is not None]
    cells.append(_fmt(_mean(diffs), metric, "+") if diffs and run != base else "")
    if metric != "loss":
      cells.append(f"{_mean([r['loss'] for r in rec.values()]):.2f}" if rec else "—")
    if scales:
      ranges = [scale_range(loaded[(run, s)]["test"], step) for s in rec]
      ranges = [r for r in ranges if r is not None]
      cells.append(f"{min(lo for lo, _ in ranges):.4g}–{max(hi for _, hi in ranges):.4g}"
                   if ranges else "—")
    for term in ("kl_y", "kl_z"):
      vals = [r[term] for r in rec.values() if term in r]
      cells.append(f"{_mean(vals):.2f}" if vals else "—")
    dips = [kl_z_dip(loaded[(run, s)]["test"]) for s in seeds if (run, s) in loaded]
    cells.append(" ".join("yes" if d else "no" for d in dips) if model_of(flags) == "kanerva"
                 else "")
    evals = [loaded[(run, s)]["eval"] for s in seeds if (run, s) in loaded]
    r2 = [(ev.get("addressing") or {}).get("retrieval_r2") if ev else None for ev in evals]
    # The evaluation of each seed's newest checkpoint, marked with its step when that is
    # not the table's step.
    cells.append(" ".join(
        "—" if v is None else f"{v:.2f}" + ("" if ev["step"] == step else f" (step {ev['step']})")
        for v, ev in zip(r2, evals)) if any(v is not None for v in r2) else "—")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def time_to_quality(exp, loaded, nats):
  """Markdown rows: for each non-baseline run and seed, the step and wall-clock minutes of
  training (from metrics.jsonl's timestamps) until its test bound in nats (whatever the
  experiment's metric) is first below the baseline's at the same step, and until it is
  first below `nats`."""
  base = exp["baseline"]
  lines = [f"Time to quality (wall-clock minutes of training on this machine, pauses left out; "
           f"they depend on the machine and on what else ran):", "",
           f"| run | seed | passes `{base}` at step | minutes | below {nats} nats at step | minutes |",
           "|---|---|---|---|---|---|"]
  for run, *_ in table_rows("", exp):
    for seed in exp["seeds"]:
      if run == base or (run, seed) not in loaded:
        continue
      r = loaded[(run, seed)]
      ref = {t["step"]: t["loss"] for t in loaded.get((base, seed), {}).get("test", [])}
      cells = []
      for fn in (lambda t: t["step"] in ref and t["loss"] < ref[t["step"]],
                 lambda t: t["loss"] < nats):
        hit = next((t for t in r["test"] if fn(t)), None)
        minutes = minutes_until(r["train"], r["test"], fn)
        cells += [str(hit["step"]) if hit else "—",
                  f"{minutes:.1f}" if minutes is not None else "—"]
      lines.append(f"| `{run}` | {seed} | " + " | ".join(cells) + " |")
  return lines


def convergence(tests, window, last=3):
  """Whether a run's test bound stopped improving (issue 12: "< 0.5 nats over 10,000 steps").

  The bound is smoothed as the mean of the `last` test records up to a step (the records are
  on the same fixed test episodes, so what remains is the model's sampling noise and the
  training's own fluctuation); the improvement is that mean at the run's last step minus the
  mean at the last record at or before `window` steps earlier.

  Returns:
    dict(step, bound, earlier_step, earlier_bound, improvement) in the experiment's records'
    "loss" (nats), or None when the run has no record `window` steps before its last.
  """
  tests = sorted((r for r in tests if "loss" in r), key=lambda r: r["step"])
  if not tests:
    return None
  end = tests[-1]["step"]
  before = [r for r in tests if r["step"] <= end - window]
  if not before:
    return None

  def smoothed(upto):
    recs = [r for r in tests if r["step"] <= upto][-last:]
    return _mean([r["loss"] for r in recs])
  bound, earlier = smoothed(end), smoothed(before[-1]["step"])
  return dict(step=end, bound=bound, earlier_step=before[-1]["step"], earlier_bound=earlier,
              improvement=earlier - bound)


def convergence_table(exp, loaded):
  """Markdown rows of an experiment's `convergence` = {"window": steps, "nats": threshold}:
  per run and seed, `convergence` of its test curve and whether it improved by less than
  `nats` over the window ("converged")."""
  window, nats = exp["convergence"]["window"], exp["convergence"]["nats"]
  lines = [f"Convergence: the test bound (mean of the last 3 evaluations) against "
           f"{window:,} steps earlier; converged when it improved by less than {nats} nats.",
           "", "| run | seed | last step | bound | step − window | bound then | improvement | "
           "converged |", "|---|---|---|---|---|---|---|---|"]
  for run, *_ in table_rows("", exp):
    for seed in exp["seeds"]:
      if (run, seed) not in loaded:
        continue
      c = convergence(loaded[(run, seed)]["test"], window)
      if c is None:
        last = loaded[(run, seed)]["test"]
        lines.append(f"| `{run}` | {seed} | {last[-1]['step'] if last else '—'} | "
                     f"— | — | — | — | no (shorter than the window) |")
        continue
      lines.append(f"| `{run}` | {seed} | {c['step']} | {c['bound']:.2f} | "
                   f"{c['earlier_step']} | {c['earlier_bound']:.2f} | {c['improvement']:.2f} | "
                   f"{'yes' if c['improvement'] < nats else 'no'} |")
  return lines


def plot_curves(name, exp, loaded, path):
  """The test curves of every run and seed: the bound in the experiment's metric, then
  reconstruction, KL(y), KL(z) in nats."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metric = metric_of(exp)
  terms = (metric,) + TERMS[1:]
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (run, *_) in enumerate(table_rows(name, exp)):
    for j, seed in enumerate(exp["seeds"]):
      if (run, seed) not in loaded:
        continue
      tests = loaded[(run, seed)]["test"]
      for ax, term in zip(axes, terms):
        pts = [(r["step"], r[term]) for r in tests if term in r]
        if pts:
          ax.plot(*zip(*pts), color=colors[i % len(colors)], alpha=0.9,
                  linestyle=("-", "--", ":", "-.")[j % 4],
                  label=f"{run} s{seed}" if term == metric else None)
  for ax, term in zip(axes, terms):
    ax.set_title("test bits/dim" if term == "bits_per_dim" else f"test {term}")
    ax.set_xlabel("step")
  if metric == "loss":   # the first steps' bounds would hide the rest
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 250))
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def report_section(name, exp, loaded):
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  curves = os.path.join("results", name, "curves.png")
  plot_curves(name, exp, loaded, os.path.join(REPO, curves))
  common = " ".join(f"`{f}`" for f in exp.get("common", []))
  lines = [f"<!-- experiment:{name} -->",
           f"Generated {stamp} by `python bench/experiment.py {name} --report` from "
           f"`results/{name}/` (trained with `--train`: `python train.py "
           f"--flagfile={exp['flagfile']}` {common} + the run's flags, {exp['steps']} steps, "
           f"seeds {', '.join(map(str, exp['seeds']))}).", ""]
  for i, step in enumerate(exp.get("report_steps") or [None]):
    lines += ([""] if i else []) + summary_table(name, exp, loaded, step)
  if exp.get("quality_nats"):
    lines += [""] + time_to_quality(exp, loaded, exp["quality_nats"])
  if exp.get("convergence"):
    lines += [""] + convergence_table(exp, loaded)
  lines += ["", f"![{name} curves]({curves})", f"<!-- /experiment:{name} -->"]
  return "\n".join(lines)


def headline_table(experiments):
  """Markdown rows of RESULTS.md's opening table: for every experiment with a `headline`
  entry ({"title": str, "paper": {run: number or None}}), each of those runs: its seeds, the
  last step all of them reached, the test bound of each seed there in the experiment's metric,
  their mean, its unit, and the paper's number ("—" for None). Seeds that stopped earlier are
  named with their last step."""
  lines = ["| experiment | run | flags | seeds | step | test bound per seed | mean | unit | "
           "paper |", "|---|---|---|---|---|---|---|---|---|"]
  for name, exp in experiments.items():
    head = exp.get("headline")
    if not head:
      continue
    metric = metric_of(exp)
    loaded = load_runs(name, exp)
    flags_of = {row: flags for row, flags, *_ in table_rows(name, exp)}   # references too
    for run, paper in head["paper"].items():
      tests = {s: loaded[(run, s)]["test"] for s in exp["seeds"]
               if (run, s) in loaded and loaded[(run, s)]["test"]}
      if not tests:
        continue
      step = max(tests[s][-1]["step"] for s in tests)
      full = {s: at_step(t, step) for s, t in tests.items() if at_step(t, step)}
      short = {s: t[-1] for s, t in tests.items() if s not in full}
      cells = [" ".join(_fmt(full[s][metric], metric) for s in sorted(full))]
      cells += [f"(seed {s}: {_fmt(r[metric], metric)} at step {r['step']})"
                for s, r in sorted(short.items())]
      flags = " ".join(f"`{f}`" for f in flags_of[run]) or "(flagfile)"
      lines.append(f"| {head['title']} | `{run}` | {flags} | "
                   f"{', '.join(map(str, sorted(full)))} | {step} | {' '.join(cells)} | "
                   f"{_fmt(_mean([r[metric] for r in full.values()]), metric)} | "
                   f"{METRICS[metric][0]} | {'—' if paper is None else paper} |")
  return lines


def _replace_section(text, start, end, section):
  """`text` with the part from marker `start` to marker `end` replaced by `section`
  (appended when the markers are absent)."""
  if start in text and end in text:
    return text[:text.index(start)] + section + text[text.index(end) + len(end):]
  return text.rstrip("\n") + "\n\n" + section + "\n"


def write_report(name, exp, results_md, experiments=None):
  """Replaces the experiment's marked section of RESULTS.md (appends it when absent), and
  the headline table between `<!-- headline -->` markers when there are such markers."""
  section = report_section(name, exp, load_runs(name, exp))
  text = open(results_md).read() if os.path.exists(results_md) else ""
  text = _replace_section(text, f"<!-- experiment:{name} -->", f"<!-- /experiment:{name} -->",
                          section)
  if "<!-- headline -->" in text and "<!-- /headline -->" in text:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(["<!-- headline -->",
                        f"Generated {stamp} by `python bench/experiment.py <name> --report` "
                        f"(each experiment's section below says how its runs were trained).",
                        "", *headline_table(experiments or EXPERIMENTS), "<!-- /headline -->"])
    text = _replace_section(text, "<!-- headline -->", "<!-- /headline -->", table)
  with open(results_md, "w") as f:
    f.write(text)
  return section


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", choices=sorted(EXPERIMENTS))
  parser.add_argument("--train", action="store_true")
  parser.add_argument("--eval", action="store_true")
  parser.add_argument("--report", action="store_true")
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--weights_only", action="store_true",
                      help="--ship the model's variables without the optimizer's slots")
  parser.add_argument("--ship", default=None, metavar="RUN:SEED:DEST",
                      help="Copy a run's newest checkpoint, config, metrics, export to "
                      "pretrained/DEST.")
  parser.add_argument("--runs", type=lambda v: v.split(","), default=None,
                      help="Comma-separated runs to train/evaluate (default: all).")
  parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                      help="Comma-separated seeds to train/evaluate (default: the experiment's).")
  parser.add_argument("--reeval", action="store_true", help="Evaluate even when up to date.")
  parser.add_argument("--steps", type=int, default=None, help="Override the experiment's steps.")
  parser.add_argument("--data_dir", default=None, help="TFDS data directory for train/eval.py "
                      "(default: theirs, $TFDS_DATA_DIR, else ~/tensorflow_datasets).")
  parser.add_argument("--results_md", default=os.path.join(REPO, "RESULTS.md"))
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f"--parallel must be >= 1; got {args.parallel}")
  exp = EXPERIMENTS[args.name]
  metric_of(exp)   # fails before training on a malformed `metric`
  if args.train:
    train(args.name, exp, args)
  if args.eval:
    evaluate(args.name, exp, args)
  if args.ship:
    parts = args.ship.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
      parser.error(f"--ship takes RUN:SEED:DEST, e.g. kanerva:0:omniglot_kanerva; got "
                   f"{args.ship!r}")
    out, step = ship(args.name, exp, parts[0], int(parts[1]), parts[2],
                     weights_only=args.weights_only)
    print(f"shipped step {step} to {out}")
  if args.report or not (args.train or args.eval or args.ship):
    print(write_report(args.name, exp, args.results_md))


if __name__ == "__main__":
  main()
