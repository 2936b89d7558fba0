"""tfllm's default job next to nanoGPT, same machine, same split, same wall clock.

  python tools/nanogpt_side_by_side.py --nanogpt=/path/to/nanoGPT --minutes=9 \
      --torch_python=/path/to/venv-with-torch/bin/python --work=/tmp/side_by_side

Run it with the interpreter of a venv that has tfllm installed (it imports tfllm for the
split and runs `tfllm-train` beside that interpreter). Nothing is fetched: `--nanogpt` is a
checkout of karpathy/nanoGPT (kept outside this repository) and `--torch_python` an
interpreter with torch and numpy (without it, a venv is made in `--work` with
`pip install torch numpy`, which needs the package index).

1. tfllm's split of `tfllm_shakespeare` (the 32 training plays; the 3 validation plays as
   one text), each play followed by an end-of-document separator as tfllm's packing does,
   written as nanoGPT's character data (`train.bin`, `val.bin`, `meta.pkl`).
2. `tfllm-train --config=shakespeare_lm` with `train.time_budget_minutes=--minutes`; its
   validation covers the whole validation split (non-overlapping blocks of 129 tokens, the
   first an input only).
3. `tools/nanogpt_budget_train.py`: nanoGPT's model at the default job's shape (4 layers,
   width 128, 4 heads, context 128, batch 6, biases, no dropout; AdamW 6e-3, betas 0.9/0.95,
   weight decay 0.1, clip 1.0, 100 warm-up steps, linear decay to 0 over the budget) for the
   same minutes, evaluated on the same blocks.

The two run one after the other (never together), so run it on an otherwise idle machine
and record `uptime` and `lscpu`'s model name with the result. Prints a table and writes
`--work/result.json`.
"""

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import time

SEPARATOR = "\x00"   # end of a play; not a character of the plays (checked)


def write_nanogpt_data(folder: str) -> dict:
  """tfllm's train and validation splits as nanoGPT character data in `folder`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfllm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tfllm.data import sources  # pylint: disable=import-outside-toplevel
  config = config_lib.default_config()
  config.data.dataset = "tfllm_shakespeare"
  texts = {}
  for split in ("train", "validation"):
    plays = [t.decode("utf-8") for t in sources.text_documents(config.data, split)
             .as_numpy_iterator()]
    if any(SEPARATOR in play for play in plays):
      raise ValueError("the separator character occurs in the plays")
    texts[split] = "".join(play + SEPARATOR for play in plays)
  chars = sorted(set(texts["train"]) | set(texts["validation"]))
  index = {c: i for i, c in enumerate(chars)}
  os.makedirs(folder, exist_ok=True)
  for split, name in (("train", "train.bin"), ("validation", "val.bin")):
    np.array([index[c] for c in texts[split]], dtype=np.uint16).tofile(
        os.path.join(folder, name))
  with open(os.path.join(folder, "meta.pkl"), "wb") as f:
    pickle.dump(dict(vocab_size=len(chars), itos=dict(enumerate(chars)), stoi=index,
                     separator_id=index[SEPARATOR]), f)
  return dict(vocab_size=len(chars), train_characters=len(texts["train"]),
              validation_characters=len(texts["validation"]))


def torch_interpreter(given: str, work: str) -> str:
  if given:
    return given
  venv = os.path.join(work, "torch-venv")
  python = os.path.join(venv, "bin", "python")
  if not os.path.exists(python):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "torch", "numpy"], check=True)
  return python


def run_tfllm(minutes: float, model_dir: str, extra) -> dict:
  train = os.path.join(os.path.dirname(sys.executable), "tfllm-train")
  command = [train, "--config=shakespeare_lm", f"--model_dir={model_dir}",
             f"--config.train.time_budget_minutes={minutes}", *extra]
  print("$", " ".join(command), flush=True)
  started = time.perf_counter()
  output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  wall = time.perf_counter() - started
  print(output, flush=True)
  trained = re.search(r"trained to step (\d+) .* in ([\d.]+) s of steps, ([\d,]+) tokens/s",
                      output)
  nats = re.search(r"nats_per_char ([\d.]+)", output)
  chars = re.search(r"characters ([\d.]+)", output)
  return dict(steps=int(trained.group(1)), train_seconds=float(trained.group(2)),
              tokens_per_second=float(trained.group(3).replace(",", "")),
              nats_per_char=float(nats.group(1)),
              validation_characters=float(chars.group(1)) if chars else None,
              process_seconds=wall)


def run_nanogpt(python: str, nanogpt: str, data: str, minutes: float) -> dict:
  driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nanogpt_budget_train.py")
  command = [python, driver, f"--nanogpt={nanogpt}", f"--data={data}", f"--minutes={minutes}"]
  print("$", " ".join(command), flush=True)
  started = time.perf_counter()
  output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  result = json.loads(output.strip().splitlines()[-1])
  result["process_seconds"] = time.perf_counter() - started
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--nanogpt", required=True, help="a karpathy/nanoGPT checkout")
  parser.add_argument("--minutes", type=float, default=9.0, help="training wall clock, each")
  parser.add_argument("--work", default="/tmp/nanogpt_side_by_side")
  parser.add_argument("--torch_python", default="", help="an interpreter with torch")
  parser.add_argument("--tfllm_flag", action="append", default=[],
                      help="extra tfllm-train flag (repeatable)")
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.nanogpt, "model.py")):
    parser.error(f"--nanogpt={args.nanogpt} has no model.py")
  os.makedirs(args.work, exist_ok=True)
  data = os.path.join(args.work, "data")
  split = write_nanogpt_data(data)
  python = torch_interpreter(args.torch_python, args.work)
  from tfllm.bench import machine as machine_lib  # pylint: disable=import-outside-toplevel
  before = machine_lib.describe()
  tfllm = run_tfllm(args.minutes, os.path.join(args.work, f"tfllm-{int(time.time())}"),
                    args.tfllm_flag)
  nanogpt = run_nanogpt(python, args.nanogpt, data, args.minutes)
  machine = machine_lib.finish(before)
  result = dict(minutes=args.minutes, split=split, machine=machine, tfllm=tfllm,
                nanogpt=nanogpt,
                tokens_per_second_ratio=tfllm["tokens_per_second"] / nanogpt["tokens_per_second"],
                nats_per_char_difference=tfllm["nats_per_char"] - nanogpt["nats_per_char"])
  with open(os.path.join(args.work, "result.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(machine_lib.summary(machine))
  print(f"{'':<10} {'steps':>8} {'tokens/s':>10} {'val nats/char':>14}")
  for name, r in (("tfllm", tfllm), ("nanoGPT", nanogpt)):
    print(f"{name:<10} {r['steps']:>8} {r['tokens_per_second']:>10,.0f} "
          f"{r['nats_per_char']:>14.4f}")
  print(f"tokens/s tfllm/nanoGPT {result['tokens_per_second_ratio']:.2f}; nats/char tfllm - "
        f"nanoGPT {result['nats_per_char_difference']:+.4f}")


if __name__ == "__main__":
  main()
