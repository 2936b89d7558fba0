"""Fine-tuning rows over seeds, as a table: validation and test mean ± spread per row.

Each row is a name and the `tfllm-train` flags that make it; each (row, seed) trains

  tfllm-train --config=CONFIG --model_dir=WORK/<row slug>_s<seed>
      --distribution_strategy=one_device --config.train.seed=<seed> <row flags>

keeps the end-of-training validation figures as `validation_metrics.json` in the run, then
evaluates the same run on the test split (`--mode=eval --config.data.eval_split=test`, which
writes `eval_metrics.json`). Runs whose test figures exist are not run again, so the tool
resumes after an interruption and a later call can add rows or seeds. The table (stdout and
`WORK/table.md`) gives, per row, the validation and test metric as mean ± spread (max - min)
over the seeds, the test difference to the first row on the same seed (mean; min..max), the
mean seconds of a training command (a run resumed after an interruption is named, not timed)
with what else ran meanwhile (the share of the machine's
CPU time other work took, lowest..highest over the row's runs, and `busy` where a run's reached
a quarter: `tfllm.bench.machine`), and the row's command; below it, the CPUs the runs were
timed on. A busy run's seconds compare only with runs beside it. Choose on the validation
column; the test column is reported, not chosen on.

  .venv/bin/python tools/seed_table.py --config=minilm_movie_sentiment --seeds=0,1,2 \\
      --work=/tmp/rows --row="baseline=" \\
      --row="layer decay 0.8=--config.train.optimizer.layer_decay=0.8"

`--metric` defaults to `accuracy` (sequence classification) or `entity/micro/f1` (token
classification), read from the run's config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from tfllm.bench import machine

DEFAULT_METRICS = {"sequence_classification": "accuracy",
                   "token_classification": "entity/micro/f1"}
VALIDATION_FILE = "validation_metrics.json"
TEST_FILE = "eval_metrics.json"
TIMES_FILE = "seed_table_seconds.json"
# The config a run trained with: `--mode=eval` rewrites config.json (its eval_split).
TRAIN_CONFIG_FILE = "seed_table_config.json"
CONFIG_FILE = "config.json"
# Keys that differ between the seeds of one row by design.
PER_RUN_KEYS = ("train.seed", "data.eval_split")


def slug(name: str) -> str:
  """A row name as a directory name: `layer decay 0.8` -> `layer_decay_0.8`."""
  return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_") or "row"


def parse_row(text: str) -> Tuple[str, List[str]]:
  """`NAME=FLAGS` -> (name, flags split as a shell would)."""
  name, sep, flags = text.partition("=")
  if not sep or not name.strip() or name.startswith("-"):
    raise ValueError(f"--row={text!r} is not NAME=FLAGS (e.g. 'baseline=' or "
                     "'lr 5e-5=--config.train.optimizer.learning_rate=5e-5')")
  return name.strip(), shlex.split(flags)


def shell_words(flags: Sequence[str]) -> str:
  """Flags as one would type them: plain words bare, others in double quotes where that is
  safe (`"--config.data.augment.methods=('eda',)"`), else `shlex.quote`d."""
  words = []
  for flag in flags:
    if re.fullmatch(r"[\w@%+=:,./-]+", flag):
      words.append(flag)
    elif not any(c in flag for c in '"$`\\!'):
      words.append(f'"{flag}"')
    else:
      words.append(shlex.quote(flag))
  return " ".join(words)


def train_command(train: str, config: str, model_dir: str, seed: int,
                  flags: Sequence[str]) -> List[str]:
  return [train, f"--config={config}", f"--model_dir={model_dir}",
          "--distribution_strategy=one_device", f"--config.train.seed={seed}", *flags]


def _read(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_one(train: str, config: str, model_dir: str, seed: int, flags: Sequence[str],
            log) -> None:
  """Trains (unless validation figures exist), then evaluates on test (unless done)."""
  command = train_command(train, config, model_dir, seed, flags)
  validation_path = os.path.join(model_dir, VALIDATION_FILE)
  if _read(validation_path) is None:
    # A model_dir with files in it is a run cut off before: tfllm-train resumes it, and the
    # seconds measured here cover only the rest.
    resumed = os.path.isdir(model_dir) and bool(os.listdir(model_dir))
    before = machine.describe()
    start = time.time()
    log(f"training {model_dir}")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = _read(os.path.join(model_dir, TEST_FILE))
    if metrics is None or metrics.get("split") != "validation":
      raise RuntimeError(f"{model_dir}: training wrote no validation figures "
                         "(config.train.eval_steps=0?)")
    with open(validation_path, "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=2, sort_keys=True)
    with open(os.path.join(model_dir, TIMES_FILE), "w", encoding="utf-8") as f:
      json.dump({"train_seconds": time.time() - start, "machine": machine.finish(before),
                 "resumed": resumed}, f)
    trained_config = _read(os.path.join(model_dir, CONFIG_FILE))
    if trained_config is not None:
      with open(os.path.join(model_dir, TRAIN_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(trained_config, f, indent=2, sort_keys=True)
  test = _read(os.path.join(model_dir, TEST_FILE))
  if test is None or test.get("split") != "test":
    log(f"evaluating {model_dir} on test")
    subprocess.run(command + ["--mode=eval", "--config.data.eval_split=test"], check=True,
                   stdout=subprocess.DEVNULL)


def _mean_spread(values: Sequence[float]) -> str:
  if not values:
    return "–"
  mean = sum(values) / len(values)
  return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {max(values) - min(values):.4f}"


def build_table(rows: Sequence[Tuple[str, List[str]]], seeds: Sequence[int],
                results: Dict[Tuple[str, int], dict], metric: str, config: str) -> str:
  """The markdown table of `results[(row name, seed)] = {"validation", "test",
  "train_seconds"}` (any may be missing: that cell counts fewer seeds)."""
  lines = [f"| row | seeds | validation {metric} | **test {metric}** (mean ± spread) | "
           "test minus the first row, same seed (mean; min..max) | training s | flags |",
           "|---|---|---|---|---|---|---|"]
  first = rows[0][0]
  for name, flags in rows:
    done = [s for s in seeds if results.get((name, s), {}).get("test") is not None]
    validation = [results[(name, s)]["validation"] for s in done
                  if results[(name, s)].get("validation") is not None]
    test = [results[(name, s)]["test"] for s in done]
    deltas = [results[(name, s)]["test"] - results[(first, s)]["test"] for s in done
              if results.get((first, s), {}).get("test") is not None]
    if name == first or not deltas:
      delta = "–"
    else:
      mean = sum(deltas) / len(deltas)
      delta = f"{mean:+.4f} ({min(deltas):+.4f}..{max(deltas):+.4f})"
    timed = [s for s in done if results[(name, s)].get("train_seconds") is not None]
    resumed = [s for s in timed if results[(name, s)].get("resumed")]
    seconds = [results[(name, s)]["train_seconds"] for s in timed if s not in resumed]
    time_cell = f"{sum(seconds) / len(seconds):.0f}" if seconds else "–"
    if resumed:
      time_cell += (f" (seed{'s' if len(resumed) > 1 else ''} "
                    f"{','.join(map(str, resumed))} resumed: not timed)")
    time_cell += _other_work_note([results[(name, s)].get("machine") for s in done])
    lines.append(f"| {name} | {','.join(map(str, done)) or '–'} | {_mean_spread(validation)} "
                 f"| **{_mean_spread(test)}** | {delta} | {time_cell} | "
                 f"`{shell_words(flags) or '(the recipe)'}` |")
  lines.append("")
  lines.append(f"Each run: `tfllm-train --config={config} --model_dir=WORK/<row>_s<seed> "
               "--distribution_strategy=one_device --config.train.seed=<seed> <flags>`, then "
               "the same with `--mode=eval --config.data.eval_split=test`.")
  machines = sorted({f"{m['cpu']}, {m['cores']} cores" for m in
                     (result.get("machine") for result in results.values()) if m})
  if machines:
    lines.append(f"Timed on: {'; '.join(machines)}. Busy: other work took a quarter or more "
                 "of the CPU time during a run, whose seconds then compare only with runs "
                 "beside it.")
  for name, _ in rows:
    drift = config_drift({s: results.get((name, s), {}).get("config") for s in seeds})
    if drift:
      lines.append(f"Config drift: the seeds of row {name!r} trained different configs "
                   f"({'; '.join(drift)}), so its figures do not pool: run the row again "
                   "in a new --work.")
  return "\n".join(lines)


def _flatten(config: dict, prefix: str = "") -> Dict[str, object]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _same_setting(a, b) -> bool:
  """Equal, or the same file under two install roots (a clone elsewhere)."""
  if a == b:
    return True
  return (isinstance(a, str) and isinstance(b, str) and a.startswith("/") and
          b.startswith("/") and a.split("/")[-3:] == b.split("/")[-3:])


def config_drift(configs: Dict[int, Optional[dict]]) -> List[str]:
  """`key: value (seeds), value (seeds)` for each setting on which the seeds of one row
  trained differently (a recipe default that moved between calls), per-run keys aside."""
  flat = {seed: _flatten(config) for seed, config in configs.items() if config}
  keys = sorted(set().union(*flat.values())) if flat else []
  drift = []
  for key in keys:
    if key in PER_RUN_KEYS:
      continue
    groups: List[Tuple[object, List[int]]] = []
    for seed in sorted(flat):
      value = flat[seed].get(key, "(unset)")
      for group_value, group_seeds in groups:
        if _same_setting(group_value, value):
          group_seeds.append(seed)
          break
      else:
        groups.append((value, [seed]))
    if len(groups) > 1:
      drift.append(f"{key}: " + ", ".join(
          f"{value!r} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
          for value, seeds in groups))
  return drift


def _other_work_note(machines: Sequence[Optional[dict]]) -> str:
  """` (other work 0..31% of the CPU, busy)` over the runs that measured it (`busy` where one
  was); empty where none did."""
  machines = [m for m in machines if m and m.get("other_work") is not None]
  if not machines:
    return ""
  shares = [m["other_work"] for m in machines]
  low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
  span = low if low == high else f"{low[:-1]}..{high}"
  busy = ", busy" if any(m.get("busy") for m in machines) else ""
  return f" (other work {span} of the CPU{busy})"


def collect(work: str, rows, seeds, metric: Optional[str]):
  """`(results, metric)` read from the runs in `work`."""
  results = {}
  for name, _ in rows:
    for seed in seeds:
      model_dir = os.path.join(work, f"{slug(name)}_s{seed}")
      validation = _read(os.path.join(model_dir, VALIDATION_FILE))
      test = _read(os.path.join(model_dir, TEST_FILE))
      trained_config = (_read(os.path.join(model_dir, TRAIN_CONFIG_FILE)) or
                        _read(os.path.join(model_dir, CONFIG_FILE)))
      if metric is None and validation is not None:
        task = (trained_config or {}).get("task", {}).get("name")
        metric = DEFAULT_METRICS.get(task, "accuracy")
      times = _read(os.path.join(model_dir, TIMES_FILE)) or {}
      results[(name, seed)] = {
          "config": trained_config if test is not None else None,
          "validation": validation.get(metric) if validation and metric else None,
          "test": test.get(metric) if test and test.get("split") == "test" and metric
                  else None,
          "train_seconds": times.get("train_seconds"),
          "resumed": times.get("resumed", False),
          "machine": times.get("machine")}
  return results, metric or "accuracy"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="tfllm-train --config (a recipe)")
  parser.add_argument("--work", required=True, help="directory of the runs and table.md")
  parser.add_argument("--row", action="append", required=True, help="NAME=FLAGS (repeat)")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated train seeds")
  parser.add_argument("--metric", default=None, help="eval metric (default by task)")
  parser.add_argument("--train", default=os.path.join(os.path.dirname(sys.executable),
                                                      "tfllm-train"),
                      help="the tfllm-train to run (default: beside this Python)")
  parser.add_argument("--table_only", action="store_true", help="print the table, run nothing")
  args = parser.parse_args(argv)
  try:
    rows = [parse_row(text) for text in args.row]
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
  except ValueError as error:
    print(f"seed_table: error: {error}", file=sys.stderr)
    return 2
  if not args.table_only and not os.path.isfile(args.train):
    print(f"seed_table: error: --train={args.train} does not exist; run this with the Python "
          "that has tfllm installed (e.g. .venv/bin/python) or pass --train=PATH", file=sys.stderr)
    return 2
  os.makedirs(args.work, exist_ok=True)
  if not args.table_only:
    for seed in seeds:         # seed-major: an interrupted sweep has whole seeds of every row
      for name, flags in rows:
        try:
          run_one(args.train, args.config, os.path.join(args.work, f"{slug(name)}_s{seed}"),
                  seed, flags, lambda line: print(line, file=sys.stderr, flush=True))
        except (subprocess.CalledProcessError, RuntimeError) as error:
          print(f"seed_table: error: row {name!r}, seed {seed}: {error}", file=sys.stderr)
          return 1
  results, metric = collect(args.work, rows, seeds, args.metric)
  table = build_table(rows, seeds, results, metric, args.config)
  with open(os.path.join(args.work, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
