"""Scaling sweeps: step time and peak memory against one config value, and the fitted growth.

`--sweep=seq_len=128,256,512` reruns the train benchmark at each length and fits
`t(T) = a + b T + c T^2` (the linear part: matmuls and elementwise work per token; the
quadratic part: attention's scores); `--sweep=num_layers=2,4,8` fits `t(L) = a + b L`.
The fit uses each point's fastest repeat (the least disturbed by other work on a shared
machine); medians are reported beside it.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tfllm import model_dir as model_dir_lib

# Sweep name -> config keys it sets.
SWEEP_KEYS = {
    "seq_len": ("data.sequence_length",),
    "num_layers": ("model.num_layers",),
    "batch_size": ("train.global_batch_size",),
    # Tensor-parallel degree (`tfllm-bench --cpu_devices=N` splits a CPU into N devices).
    "model_parallel": ("train.model_parallel",),
}


def parse_sweep(text: str) -> Tuple[str, List[int]]:
  """`"seq_len=128,256"` -> `("seq_len", [128, 256])`; ValueError naming what is accepted."""
  name, _, values = text.partition("=")
  name = name.strip()
  if name not in SWEEP_KEYS or not values:
    raise ValueError(f"--sweep={text!r} is not accepted; use NAME=V1,V2,... with NAME one of: "
                     f"{', '.join(SWEEP_KEYS)}")
  try:
    numbers = [int(v) for v in values.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--sweep={text!r}: values must be integers, e.g. {name}=128,256") from None
  if not numbers or min(numbers) < 1:
    raise ValueError(f"--sweep={text!r}: give positive integers, e.g. {name}=128,256")
  return name, sorted(set(numbers))


def config_at(config, name: str, value: int):
  """A copy of `config` with the sweep value set (a longer sequence widens the model's
  `max_sequence_length` to fit it)."""
  config = copy.deepcopy(config)
  for key in SWEEP_KEYS[name]:
    section, field = key.split(".")
    config[section][field] = int(value)
  if name == "seq_len" and config.model.max_sequence_length < value:
    config.model.max_sequence_length = int(value)
  return config


def fit_growth(xs: Sequence[float], ys: Sequence[float], quadratic: bool) -> Dict:
  """Least-squares `y = a + b x (+ c x^2)`; per point, the linear and quadratic parts.

  With fewer than 3 points a quadratic fit falls back to a line (stated in `terms`).
  """
  xs = np.asarray(xs, float)
  ys = np.asarray(ys, float)
  degree = 2 if quadratic and len(xs) >= 3 else 1
  if len(xs) < 2:
    raise ValueError("a growth fit needs at least 2 sweep values")
  design = np.stack([xs ** p for p in range(degree + 1)], axis=1)
  coefficients, *_ = np.linalg.lstsq(design, ys, rcond=None)
  predicted = design @ coefficients
  total = float(np.sum((ys - ys.mean()) ** 2))
  r2 = 1.0 - float(np.sum((ys - predicted) ** 2)) / total if total > 0 else 1.0
  a, b = float(coefficients[0]), float(coefficients[1])
  c = float(coefficients[2]) if degree == 2 else 0.0
  points = [dict(x=float(x), fitted=float(p), constant=a, linear=b * x, quadratic=c * x * x,
                 quadratic_share=(c * x * x / p) if p else None)
            for x, p in zip(xs, predicted)]
  return dict(terms="a + b*x + c*x^2" if degree == 2 else "a + b*x", a=a, b=b, c=c, r2=r2,
              points=points)


def summarize_sweep(name: str, points: List[Dict]) -> Dict:
  """Fits of step time (fastest repeat) over a sweep's `points`, wall and CPU time.

  Each point: `{"value", "step_seconds": {min, median, max}, "step_cpu_seconds": {...},
  "peak_bytes"}`. The CPU-time fit is the steadier one on a shared machine (another
  process taking the cores stretches wall time, not the CPU time of this one).
  """
  xs = [p["value"] for p in points]
  quadratic = name == "seq_len"
  result = dict(name=name, points=points,
                step_time_fit=fit_growth(xs, [p["step_seconds"]["min"] for p in points],
                                         quadratic))
  if all(p.get("step_cpu_seconds") for p in points):
    result["step_cpu_time_fit"] = fit_growth(
        xs, [p["step_cpu_seconds"]["min"] for p in points], quadratic)
  return result


def plot_sweeps(sweeps: List[Dict], path: str) -> str:
  """A PNG of step time (points, fit) and peak memory against each sweep's values."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(len(sweeps), 2, figsize=(10, 3.6 * len(sweeps)), squeeze=False)
  for row, sweep in zip(axes, sweeps):
    xs = np.array([p["value"] for p in sweep["points"]], float)
    fit = sweep["step_time_fit"]
    dense = np.linspace(xs.min(), xs.max(), 100)
    row[0].plot(xs, [p["step_seconds"]["min"] * 1e3 for p in sweep["points"]], "o",
                label="fastest repeat")
    row[0].plot(xs, [p["step_seconds"]["median"] * 1e3 for p in sweep["points"]], "x",
                label="median")
    row[0].plot(dense, (fit["a"] + fit["b"] * dense + fit["c"] * dense ** 2) * 1e3, "-",
                label=f"fit {fit['terms']} (R²={fit['r2']:.3f})")
    cpu_fit = sweep.get("step_cpu_time_fit")
    if cpu_fit:
      row[0].plot(xs, [p["step_cpu_seconds"]["min"] * 1e3 for p in sweep["points"]], "s",
                  label="CPU time, fastest repeat")
      row[0].plot(dense, (cpu_fit["a"] + cpu_fit["b"] * dense + cpu_fit["c"] * dense ** 2)
                  * 1e3, "--", label=f"CPU-time fit (R²={cpu_fit['r2']:.3f})")
    row[0].set_xlabel(sweep["name"])
    row[0].set_ylabel("step time (ms)")
    row[0].legend(fontsize=8)
    memory = [p.get("peak_bytes") for p in sweep["points"]]
    if any(m is not None for m in memory):
      row[1].plot(xs, [(m or 0) / 2 ** 20 for m in memory], "o-")
    row[1].set_xlabel(sweep["name"])
    row[1].set_ylabel(f"peak memory (MiB, {sweep['points'][0].get('memory_kind', '')})")
  figure.tight_layout()
  try:
    return model_dir_lib.write_with_local_writer(
        path, lambda local: figure.savefig(local, dpi=100, format="png"))
  finally:
    plt.close(figure)
