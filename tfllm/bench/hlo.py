"""XLA cost of one compiled training step, tfllm next to KerasHub: a GPU proxy without a GPU.

`benchmark_hlo(config, ...)` builds the bench's training step (`bench.train`: forward, mean
token cross-entropy, gradients, AdamW, one `tf.function(jit_compile=True)`) for each model,
asks TensorFlow for its HLO (`experimental_get_compiler_ir`, stages `hlo` and
`optimized_hlo`) and reads the costs from the HLO text, since TF 2.21 exposes no XLA cost
analysis to Python:

  dot FLOPs       2 x output elements x contracted size of every `dot`/`convolution` of the
                  unoptimized module (backend-neutral; elementwise work not counted)
  bytes accessed  XLA's rule for an executed instruction: the bytes of its operands plus its
                  result, summed over the instructions the optimized module runs (the entry
                  computation and the computations it calls, while bodies once; not the
                  inside of fusions); `parameter`, `constant`, `tuple`, `get-tuple-element`
                  and `bitcast` move nothing
  fusions         `fusion` instructions executed; custom calls likewise (with their targets)
  peak buffers    live-range estimate over the optimized entry computation's schedule: at
                  each instruction the bytes of every buffer defined and still to be read
                  (arguments stay live throughout); aliasing ops define no buffer
  roofline        max(FLOPs / peak FLOP/s, bytes / memory bandwidth) on an H100 SXM
                  (989 TFLOP/s bf16 dense, 3.35 TB/s)

The optimized module is XLA:CPU's when this runs on a CPU: its fusion decisions differ from
XLA:GPU's, so bytes and fusions are a proxy for the GPU's, exact for this CPU's program.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Callable, Dict, List, Optional, Tuple

H100_BF16_FLOPS = 989e12
H100_BYTES_PER_SECOND = 3.35e12

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
# Opcodes that define no new buffer and move no bytes.
_NO_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast",
               "after-all", "partition-id", "replica-id", "iota"}
_ALIASES = {"tuple", "get-tuple-element", "bitcast"}
_CALLED = re.compile(r"\b(?:body|condition|true_computation|false_computation|to_apply)="
                     r"%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def shape_bytes(shape: str) -> float:
  """Bytes of an HLO shape (`f32[16,128]{1,0}`, a tuple of them, `token[]`: 0)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 0)
    elements = 1
    for dim in filter(None, dims.split(",")):
      elements *= int(dim)
    total += size * elements
  return total


def _dims(shape: str) -> List[int]:
  match = _ARRAY.search(shape)
  return [int(d) for d in filter(None, match.group(2).split(","))] if match else []


def _split_balanced(text: str, opening: str, closing: str) -> Tuple[str, str]:
  """(`text` up to the bracket closing its first character, the rest after it)."""
  depth = 0
  for index, char in enumerate(text):
    depth += char == opening
    depth -= char == closing
    if depth == 0:
      return text[:index + 1], text[index + 1:]
  return text, ""


def _top_level_split(text: str) -> List[str]:
  parts, depth, current = [], 0, []
  for char in text:
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    if char == "," and depth == 0:
      parts.append("".join(current))
      current = []
    else:
      current.append(char)
  if "".join(current).strip():
    parts.append("".join(current))
  return parts


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: List[str]   # operand names
  attributes: str       # the text after the operand list
  operand_shapes: List[str]


def _parse_instruction(line: str) -> Optional[Instruction]:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  name, rest = match.group(1), match.group(2).strip()
  if rest.startswith("("):
    shape, rest = _split_balanced(rest, "(", ")")
  else:
    shape, _, rest = rest.partition(" ")
  rest = rest.strip()
  opcode_match = re.match(r"([\w\-]+)\(", rest)
  if not opcode_match:
    return None
  opcode = opcode_match.group(1)
  operand_text, attributes = _split_balanced(rest[len(opcode):], "(", ")")
  operands, operand_shapes = [], []
  for operand in _top_level_split(operand_text[1:-1]):
    tokens = operand.strip().split()
    if tokens:
      operands.append(tokens[-1].lstrip("%"))
      operand_shapes.append(" ".join(tokens[:-1]))
  return Instruction(name, shape, opcode, operands, attributes, operand_shapes)


def parse_module(text: str) -> Tuple[Dict[str, List[Instruction]], Optional[str]]:
  """HLO module text -> ({computation name: instructions in order}, entry name)."""
  computations: Dict[str, List[Instruction]] = {}
  entry, current = None, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and current is None:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    if current is not None:
      instruction = _parse_instruction(line)
      if instruction is not None:
        computations[current].append(instruction)
  return computations, entry


def _executed(computations, entry) -> List[str]:
  """The entry and the computations its instructions run as code of their own (while
  bodies and conditions, branches, calls), not fused or reduction bodies."""
  order, pending = [], [entry]
  while pending:
    name = pending.pop()
    if name in order or name not in computations:
      continue
    order.append(name)
    for instruction in computations[name]:
      if instruction.opcode in ("fusion", "reduce", "reduce-window", "scatter", "sort",
                                "map", "select-and-scatter", "all-reduce", "reduce-scatter"):
        continue
      pending.extend(_CALLED.findall(instruction.attributes))
      for branches in _BRANCHES.findall(instruction.attributes):
        pending.extend(b.strip().lstrip("%") for b in branches.split(",") if b.strip())
  return order


def dot_flops(computations) -> float:
  """2 x output elements x contracted size of every dot (and convolution) in the module."""
  total = 0.0
  for instructions in computations.values():
    shapes = {i.name: i.shape for i in instructions}
    for instruction in instructions:
      if instruction.opcode not in ("dot", "convolution"):
        continue
      output = 1
      for dim in _dims(instruction.shape):
        output *= dim
      lhs_shape = (instruction.operand_shapes[0] if instruction.operand_shapes
                   and instruction.operand_shapes[0] else shapes.get(instruction.operands[0], ""))
      lhs = _dims(lhs_shape)
      contracted = 1
      if instruction.opcode == "dot":
        match = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction.attributes)
        for dim in filter(None, (match.group(1) if match else "").split(",")):
          contracted *= lhs[int(dim)]
      else:  # convolution: input feature size x window, from the kernel's shape
        rhs_shape = (instruction.operand_shapes[1] if len(instruction.operand_shapes) > 1
                     and instruction.operand_shapes[1] else shapes.get(instruction.operands[1], ""))
        rhs = _dims(rhs_shape)
        contracted = 1
        for dim in rhs[:-1]:
          contracted *= dim
      total += 2.0 * output * contracted
  return total


def _defined_shapes(instructions) -> Dict[str, str]:
  return {i.name: i.shape for i in instructions}


def traffic(computations, entry) -> Dict:
  """Bytes accessed, fusions and custom calls of the executed computations."""
  by_opcode: Dict[str, float] = collections.Counter()
  targets: Dict[str, int] = collections.Counter()
  fusions = custom_calls = 0
  for name in _executed(computations, entry):
    instructions = computations[name]
    shapes = _defined_shapes(instructions)
    for instruction in instructions:
      if instruction.opcode in _NO_TRAFFIC:
        continue
      operand_bytes = sum(shape_bytes(shapes.get(operand, given))
                          for operand, given in zip(instruction.operands,
                                                    instruction.operand_shapes))
      kind = instruction.opcode
      if kind == "fusion":
        fusions += 1
        fusion_kind = re.search(r"kind=(\w+)", instruction.attributes)
        kind = f"fusion:{fusion_kind.group(1) if fusion_kind else '?'}"
      elif kind == "custom-call":
        custom_calls += 1
        target = re.search(r'custom_call_target="([^"]*)"', instruction.attributes)
        targets[target.group(1) if target else "?"] += 1
      by_opcode[kind] += operand_bytes + shape_bytes(instruction.shape)
  return dict(bytes_accessed=float(sum(by_opcode.values())), fusions=fusions,
              custom_calls=custom_calls, custom_call_targets=dict(targets),
              bytes_by_kind=dict(sorted(by_opcode.items(), key=lambda kv: -kv[1])))


def peak_buffer_bytes(computations, entry) -> float:
  """Live-range estimate of the entry computation's peak buffer bytes (see module doc)."""
  instructions = computations[entry]
  sources: Dict[str, List[str]] = {}   # name -> buffers it stands for
  sizes: Dict[str, float] = {}
  last_use: Dict[str, int] = {}
  for index, instruction in enumerate(instructions):
    if instruction.opcode in _ALIASES:
      sources[instruction.name] = [s for operand in instruction.operands
                                   for s in sources.get(operand, [])]
    else:
      sources[instruction.name] = [instruction.name]
      sizes[instruction.name] = shape_bytes(instruction.shape)
    for operand in instruction.operands:
      for source in sources.get(operand, []):
        last_use[source] = index
  end = len(instructions) - 1
  for source in sources.get(instructions[-1].name, []) if instructions else []:
    last_use[source] = end  # the result lives to the end
  for instruction in instructions:
    if instruction.opcode == "parameter":
      last_use[instruction.name] = end
  live, peak = 0.0, 0.0
  frees: Dict[int, float] = collections.Counter()
  for name, index in last_use.items():
    if name in sizes:
      frees[index] += sizes[name]
  for index, instruction in enumerate(instructions):
    live += sizes.get(instruction.name, 0.0) if instruction.opcode not in _ALIASES else 0.0
    peak = max(peak, live)
    live -= frees.get(index, 0.0)
    if instruction.name in sizes and instruction.name not in last_use:
      live -= sizes[instruction.name]  # never read: freed at once
  return peak


def analyze(hlo_text: str, optimized_text: str) -> Dict:
  """Costs of one step from its unoptimized and optimized HLO module texts."""
  computations, _ = parse_module(hlo_text)
  optimized, entry = parse_module(optimized_text)
  if entry is None:
    raise ValueError("the optimized HLO has no ENTRY computation")
  flops = dot_flops(computations)
  result = dict(dot_flops=flops, **traffic(optimized, entry),
                peak_buffer_bytes=peak_buffer_bytes(optimized, entry))
  compute_s = flops / H100_BF16_FLOPS
  memory_s = result["bytes_accessed"] / H100_BYTES_PER_SECOND
  result["roofline"] = dict(compute_seconds=compute_s, memory_seconds=memory_s,
                            seconds=max(compute_s, memory_s),
                            bound="memory" if memory_s > compute_s else "compute")
  return result


def benchmark_hlo(config, batch_size: int = 0, compare: Optional[str] = "keras_hub",
                  log: Callable[[str], None] = print) -> Dict:
  """XLA costs of the training step of `config`'s model (and KerasHub's of the same shape).

  Args:
    config: full validated config (model shape; `data.sequence_length`).
    batch_size: examples per step (0: `config.train.global_batch_size`).
    compare: "keras_hub" (default) or None (tfllm alone).
    log: progress lines.

  Returns:
    JSON-ready dict: per model `analyze`'s figures, and the shape.
  """
  import keras  # pylint: disable=g-import-not-at-top
  from tfllm.bench import train  # Keras and TF: only to benchmark (the HLO parsing needs neither)
  batch_size = int(batch_size or config.train.global_batch_size)
  sequence_length = int(config.data.sequence_length)
  token_ids, labels = train.synthetic_tokens(config.model.vocab_size, batch_size,
                                             sequence_length)
  candidates = [train.tfllm_candidate(config, token_ids)]
  if compare:
    candidates.append(train.keras_hub_candidate(config, token_ids))
    train.check_same_shape(candidates)
  models = {}
  for candidate in candidates:
    step, arguments = train.train_step_function(candidate, labels, jit_compile=True)
    log(f"[hlo] {candidate.name}: compiling the train step ({candidate.num_parameters:,} "
        f"parameters, batch {batch_size} x {sequence_length})")
    compiler_ir = step.experimental_get_compiler_ir(*arguments)
    models[candidate.name] = dict(parameters=candidate.num_parameters,
                                  **analyze(compiler_ir(stage="hlo"),
                                            compiler_ir(stage="optimized_hlo")))
  return dict(mode="hlo", batch_size=batch_size, sequence_length=sequence_length,
              dtype_policy=keras.mixed_precision.global_policy().name,
              peak=dict(flops_per_second=H100_BF16_FLOPS,
                        bytes_per_second=H100_BYTES_PER_SECOND, device="H100 SXM bf16"),
              models=models)


def table(result: Dict) -> str:
  """The side-by-side table `tfllm-bench --mode=hlo` prints."""
  models = result["models"]
  names = list(models)
  rows = [
      ("dot FLOPs", lambda m: f"{m['dot_flops'] / 1e9:,.2f} G"),
      ("bytes accessed", lambda m: f"{m['bytes_accessed'] / 2**20:,.1f} MiB"),
      ("fusions", lambda m: str(m["fusions"])),
      ("custom calls", lambda m: str(m["custom_calls"])),
      ("peak buffers (est.)", lambda m: f"{m['peak_buffer_bytes'] / 2**20:,.1f} MiB"),
      ("H100 roofline", lambda m: f"{m['roofline']['seconds'] * 1e3:,.3f} ms "
                                  f"({m['roofline']['bound']})"),
  ]
  width = max(len(label) for label, _ in rows)
  lines = [f"train step, batch {result['batch_size']} x {result['sequence_length']}, "
           f"{result['dtype_policy']}, XLA cost from the HLO text"]
  lines.append(f"{'':<{width}}  " + "  ".join(f"{name:>22}" for name in names))
  for label, cell in rows:
    lines.append(f"{label:<{width}}  " + "  ".join(f"{cell(models[n]):>22}" for n in names))
  if "tfllm" in models and "keras_hub" in models:
    tfllm, hub = models["tfllm"], models["keras_hub"]
    lines.append(f"bytes accessed tfllm/keras_hub: "
                 f"{tfllm['bytes_accessed'] / hub['bytes_accessed']:.3f}; by kind (MiB): "
                 + "; ".join(f"{kind} {tfllm['bytes_by_kind'].get(kind, 0) / 2**20:,.1f} vs "
                             f"{hub['bytes_by_kind'].get(kind, 0) / 2**20:,.1f}"
                             for kind in sorted(set(tfllm["bytes_by_kind"])
                                                | set(hub["bytes_by_kind"]))))
  return "\n".join(lines)
