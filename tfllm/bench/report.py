"""Readable tables of benchmark results, and the JSON file."""

from __future__ import annotations

import json
from typing import Dict, List, Optional

from tfllm import model_dir as model_dir_lib


def _range(stats: Optional[Dict], scale: float = 1.0, digits: int = 1) -> str:
  if not stats:
    return "-"
  return (f"{stats['median'] * scale:.{digits}f} "
          f"[{stats['min'] * scale:.{digits}f}..{stats['max'] * scale:.{digits}f}]")


def _mib(memory: Optional[Dict], key: str = "peak_bytes") -> str:
  value = (memory or {}).get(key)
  return "-" if value is None else f"{value / 2 ** 20:.0f}"


def _table(header: List[str], rows: List[List[str]]) -> str:
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def train_table(result: Dict) -> str:
  peak = result.get("peak") or {}
  lines = [
      f"train: batch {result['batch_size']} x seq {result['sequence_length']}, "
      f"{result['steps']} steps x {result['repeats']} rounds (alternating), "
      f"jit_compile={result['jit_compile']}, policy {result['dtype_policy']}",
      f"MFU: {result['formula']}; peak "
      + (f"{peak['flops_per_second'] / 1e9:.1f} GFLOP/s ({peak['source']})"
         if peak.get("flops_per_second") else f"unknown ({peak.get('source', 'not asked')})"),
      "values: median [min..max] over rounds",
  ]
  rows = []
  for name, entry in result["models"].items():
    rows.append([name, f"{entry['parameters']:,}", _range(entry["tokens_per_second"], 1, 0),
                 _range(entry["step_seconds"], 1e3, 1),
                 _range(entry.get("step_cpu_seconds"), 1e3, 1), _range(entry["mfu"], 100, 1),
                 _mib(entry["memory"]), _mib(entry["memory"], "rss_peak_bytes")])
  lines.append(_table(["model", "params", "tokens/s", "step ms", "step CPU ms", "MFU %",
                       "peak MiB", "RSS MiB"], rows))
  for name, stats in result.get("ratios", {}).items():
    lines.append(f"{name}: {_range(stats, 1, 3)}")
  return "\n".join(lines)


def generate_table(result: Dict) -> str:
  lines = [f"generate: prompt {result['prompt_length']} + {result['new_tokens']} new tokens, "
           f"greedy, {result['repeats']} rounds (alternating), jit_compile="
           f"{result['jit_compile']}", "values: median [min..max] over rounds"]
  rows, ratios = [], []
  for batch, entry in result["batch_sizes"].items():
    for name, stats in entry.items():
      if name.startswith("ratio"):
        ratios.append(f"batch {batch}: {name}: {_range(stats, 1, 3)}")
        continue
      rows.append([batch, name, _range(stats["new_tokens_per_second"], 1, 0),
                   _range(stats["seconds_per_token"], 1e3, 2),
                   _range(stats.get("cpu_seconds_per_call"), 1e3, 0)])
  lines.append(_table(["batch", "model", "new tokens/s", "ms/token", "CPU ms/call"], rows))
  return "\n".join(lines + ratios)


def attention_table(result: Dict) -> str:
  lines = [f"attention layer ({result['passes']}, causal={result['causal']}, hidden "
           f"{result['hidden_dim']}, {result['num_heads']} heads, batch {result['batch_size']}"
           f"), block {result['block_size']}, {result['repeats']} rounds (alternating)",
           "values: median [min..max] over rounds; memory: TF allocator peak during a call, and "
           "its increase over what was held before"]
  rows, ratios = [], []
  for length, entry in result["sequence_lengths"].items():
    for name in ("standard", "blockwise"):
      stats = entry[name]
      rows.append([length, name, _range(stats["seconds"], 1e3, 0), _mib(stats["memory"]),
                   _mib(stats["memory"], "increase_bytes")])
    ratios.append(f"seq {length}: time blockwise/standard "
                  f"{_range(entry['ratio seconds blockwise/standard'], 1, 2)}; peak memory "
                  f"blockwise/standard "
                  f"{entry.get('ratio memory peak_bytes blockwise/standard', float('nan')):.3f}")
  lines.append(_table(["seq", "attention", "ms/call", "peak MiB", "increase MiB"], rows))
  return "\n".join(lines + ratios)


def sweep_table(sweep: Dict) -> str:
  lines, columns = [], []
  for label, key in (("wall", "step_time_fit"), ("CPU", "step_cpu_time_fit")):
    fit = sweep.get(key)
    if not fit:
      continue
    lines.append(f"sweep {sweep['name']}: {label}-time fit {fit['terms']}: "
                 f"a={fit['a'] * 1e3:.2f} ms, b={fit['b'] * 1e3:.4g} ms, "
                 f"c={fit['c'] * 1e3:.4g} ms (R²={fit['r2']:.3f}; fastest round per point)")
    columns.append((label, fit))
  header = [sweep["name"], "step ms", "step CPU ms"]
  for label, _ in columns:
    header += [f"{label} linear ms", f"{label} quadratic ms", f"{label} quad share"]
  header += ["peak MiB", "weights + AdamW MiB, largest device", "collectives % of op time"]
  rows = []
  for i, point in enumerate(sweep["points"]):
    row = [point["value"], _range(point["step_seconds"], 1e3, 1),
           _range(point.get("step_cpu_seconds"), 1e3, 1)]
    for _, fit in columns:
      fitted = fit["points"][i]
      share = fitted["quadratic_share"]
      row += [f"{fitted['linear'] * 1e3:.1f}", f"{fitted['quadratic'] * 1e3:.1f}",
              "-" if share is None else f"{share * 100:.0f}%"]
    row.append("-" if point.get("peak_bytes") is None else f"{point['peak_bytes'] / 2**20:.0f}")
    device_bytes = point.get("device_bytes") or {}
    row.append(f"{max(device_bytes.values()) / 2**20:.1f} (of {len(device_bytes)})"
               if device_bytes else "-")
    communication = point.get("collectives")
    row.append(f"{communication['share'] * 100:.1f}" if communication else "-")
    rows.append(row)
  lines.append(_table(header, rows))
  return "\n".join(lines)


def write_json(result: Dict, path: str) -> str:
  """Writes `result` to `path` (any TF filesystem; a staged file renamed into place)."""
  return model_dir_lib.write_atomically(
      path, json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
