"""tfllm-bench: FLOP counts, equal shapes of compared models, and the tool end to end.

No timing assertions: only that the tool runs, writes what it says, and counts right.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.testing import tiny_config
from tfllm import config as config_lib
from tfllm.bench import collectives, keras_hub_models, machine, measure, mfu, sweep
from tfllm.bench import run as bench
from tfllm.bench import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(style="gpt2", **model):
  """A tiny GPT-2 causal LM or BERT masked LM, vocabulary 100, batch 2 x 16 tokens."""
  return tiny_config(style, "causal_lm" if style == "gpt2" else "masked_lm", vocab_size=100,
                     data=dict(sequence_length=16), train=dict(global_batch_size=2), **model)


def _gpt2_parameters(vocab, positions, hidden, layers, intermediate):
  """GPT-2's parameter count by hand: embeddings, then per block two LayerNorms, QKV and
  output projections, the MLP; a final LayerNorm; the output projection is tied."""
  per_block = (2 * 2 * hidden                       # two LayerNorms (scale, bias)
               + hidden * 3 * hidden + 3 * hidden   # fused QKV
               + hidden * hidden + hidden           # attention output
               + hidden * intermediate + intermediate + intermediate * hidden + hidden)
  return vocab * hidden + positions * hidden + layers * per_block + 2 * hidden


@pytest.mark.parametrize("shape", [
    # (vocab, positions, hidden, heads, layers, intermediate, sequence length)
    (100, 32, 32, 4, 2, 64, 16),
    (8000, 128, 256, 4, 4, 1024, 128),   # gpt_tiny
])
def test_training_flops_per_token_match_a_hand_count(shape):
  vocab, positions, hidden, heads, layers, intermediate, length = shape
  config = _config()
  config.model.update(vocab_size=vocab, max_sequence_length=positions, hidden_dim=hidden,
                      num_heads=heads, num_layers=layers, intermediate_dim=intermediate)
  candidate = train.tfllm_candidate(config, tf.zeros((1, 2), tf.int32))
  total = _gpt2_parameters(vocab, positions, hidden, layers, intermediate)
  assert candidate.num_parameters == total
  without_positions = total - positions * hidden
  assert mfu.flops_parameter_count(candidate.counted) == without_positions
  expected = 6 * without_positions + 12 * layers * heads * (hidden // heads) * length
  got = mfu.training_flops_per_token(candidate.counted, layers, heads, hidden // heads, length)
  assert got == expected
  if shape[0] == 8000:
    # gpt_tiny: N = 5,207,552 -> 6N = 31,245,312; attention 12*4*4*64*128 = 1,572,864.
    assert expected == 32_818_176


@pytest.mark.parametrize("style", ["gpt2", "bert"])
def test_compared_keras_hub_model_has_the_same_parameter_count(style):
  config = _config(style)
  token_ids = tf.zeros((2, 16), tf.int32)
  ours = train.tfllm_candidate(config, token_ids)
  theirs = train.keras_hub_candidate(config, token_ids)
  assert ours.num_parameters == theirs.num_parameters == train.check_same_shape([ours, theirs])
  assert (mfu.flops_parameter_count(ours.counted)
          == mfu.flops_parameter_count(theirs.counted)
          - (0 if style == "gpt2" else 32 * 32 + 32))  # KerasHub BERT's unused pooler
  logits = theirs.logits_fn(theirs.features)
  assert logits.shape == (2, 16, 100)


def test_keras_hub_comparison_refuses_a_shape_it_cannot_build():
  config = _config(num_kv_heads=2)
  with pytest.raises(config_lib.ConfigError, match="num_kv_heads=2"):
    keras_hub_models.comparison_kind(config.model)


def test_growth_fit_recovers_linear_and_quadratic_parts():
  xs = [128, 256, 512, 1024]
  ys = [0.01 + 2e-5 * x + 3e-8 * x * x for x in xs]
  fit = sweep.fit_growth(xs, ys, quadratic=True)
  np.testing.assert_allclose([fit["a"], fit["b"], fit["c"]], [0.01, 2e-5, 3e-8], rtol=1e-6)
  last = fit["points"][-1]
  np.testing.assert_allclose(last["quadratic_share"], 3e-8 * 1024 ** 2 / ys[-1], rtol=1e-6)


def test_sweep_flag_is_parsed_or_refused_with_the_accepted_names():
  assert sweep.parse_sweep("seq_len=256,128") == ("seq_len", [128, 256])
  with pytest.raises(ValueError, match="seq_len, num_layers, batch_size, model_parallel"):
    sweep.parse_sweep("width=1,2")


def test_model_parallel_sweep_times_the_sharded_model_and_measures_bytes_per_device():
  """At N=2 (the session's 2 logical CPUs) the step trains the tensor-parallel model (its
  loss from the vocabulary shards) and every device holds less than the N=1 model."""
  result = bench.run(_config(num_heads=2), mode="train", sweeps=["model_parallel=1,2"],
                     steps=1, repeats=1, log=lambda line: None)
  (summary,) = result["sweeps"]
  one, two = [point["device_bytes"] for point in summary["points"]]
  assert len(one) == 1 and len(two) == 2
  (whole,) = one.values()
  # Every weight and slot is held once: split ones over both, replicated ones on device 0.
  assert max(two.values()) < whole == sum(two.values())
  sharded = summary["points"][1]["result"]
  assert sharded["jit_compile"] is False and sharded["models"]["tfllm"]["model_parallel"] == 2
  # The profile finds the partial sums and the copies between the 2 devices, a part of the
  # op time; the unsharded step has none to find.
  communication = summary["points"][1]["collectives"]
  assert 0 < communication["transfer_ms"] < communication["collective_ms"]
  assert 0 < communication["share"] < 1 and summary["points"][0]["collectives"] is None
  assert np.isfinite(sharded["models"]["tfllm"]["tokens_per_second"]["median"])
  with pytest.raises(ValueError, match="--compare=keras_hub is not accepted"):
    config = _config(num_heads=2)
    config.train.model_parallel = 2
    bench.run(config, mode="train", compare="keras_hub", steps=1, repeats=1,
              log=lambda line: None)


def test_collectives_are_the_shard_combines_and_the_copies_between_devices():
  scope = collectives.COLLECTIVE_SCOPE
  assert collectives.is_collective(f"model/block_0/attention/{scope}/AddN:AddN")
  assert collectives.is_collective(f"{scope}/Max:Max")
  assert collectives.is_collective("Max_1/_161:_Send")
  assert collectives.is_collective("adam_w/Cast/ReadVariableOp/_12:_Recv")
  assert not collectives.is_collective("model/block_0/feed_forward/up/MatMul:_MklMatMul")
  assert not collectives.is_collective(f"{scope}_like/AddN:AddN")


def test_train_mode_with_comparison_and_sweep_writes_json_and_plot(tmp_path):
  output = str(tmp_path / "train.json")
  result = bench.run(_config(), mode="train", compare="keras_hub", steps=1, repeats=2,
                     peak_flops=1e11, output=output, log=lambda line: None)
  saved = json.loads(open(output).read())
  assert saved["models"]["tfllm"]["parameters"] == saved["models"]["keras_hub"]["parameters"]
  ratio = saved["ratios"]["tokens_per_second tfllm/keras_hub"]
  assert ratio["n"] == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
  assert saved["models"]["tfllm"]["mfu"]["median"] > 0
  assert result["models"]["tfllm"]["memory"]["peak_bytes"] > 0

  output = str(tmp_path / "sweep.json")
  bench.run(_config(), mode="train", sweeps=["seq_len=8,16,32"], steps=1, repeats=1,
            peak_flops=1e11, output=output, log=lambda line: None)
  saved = json.loads(open(output).read())
  (summary,) = saved["sweeps"]
  assert [p["value"] for p in summary["points"]] == [8, 16, 32]
  assert summary["step_time_fit"]["terms"] == "a + b*x + c*x^2"
  with open(tmp_path / "sweep.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_generate_mode_times_both_generators(tmp_path):
  output = str(tmp_path / "generate.json")
  bench.run(_config(), mode="generate", compare="keras_hub", sweeps=["batch_size=2"],
            prompt_length=4, new_tokens=3, repeats=1, output=output, log=lambda line: None)
  saved = json.loads(open(output).read())
  entry = saved["batch_sizes"]["2"]
  assert set(entry) == {"tfllm", "keras_hub", "ratio new_tokens_per_second tfllm/keras_hub",
                        "ratio cpu time per call keras_hub/tfllm"}
  assert entry["tfllm"]["new_tokens_per_second"]["median"] > 0
  assert set(saved["machine"]) == {"cpu", "cores", "load_before", "load_after", "other_work",
                                   "busy"}
  assert saved["machine"]["cores"] >= 1 and saved["machine"]["cpu"]


@pytest.mark.parametrize("load, busy", [(0.2, False), (0.99, False), (1.0, True), (3.5, True),
                                        (None, False)])
def test_without_cpu_times_busy_means_the_load_before_reached_half_the_cores(monkeypatch, load,
                                                                             busy):
  monkeypatch.setattr(machine, "load_average", lambda: load)
  monkeypatch.setattr(machine, "machine_cpu_seconds", lambda: None)
  monkeypatch.setattr(machine.runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(machine, "cpu_model", lambda: "Some CPU")
  result = machine.finish(machine.describe())
  assert result == dict(cpu="Some CPU", cores=2, load_before=load, load_after=load,
                        other_work=None, busy=busy)
  line = machine.summary(result)
  assert line.startswith("machine: Some CPU, 2 cores, load average ")
  assert ("busy: other work shared the cores" in line) == busy
  assert "other work" not in line.split("(")[0]


@pytest.mark.parametrize("machine_busy, own, share, busy", [
    (4.0, 4.0, 0.0, False),     # every busy second was this process's or its children's
    (4.0, 2.0, 0.2, False),
    (6.0, 1.0, 0.5, True),      # other work took half of the 10 CPU seconds that passed
    (3.0, 5.0, 0.0, False),     # own time counted past the window (rounding): clipped at 0
])
def test_other_work_is_busy_cpu_time_less_this_process_and_its_children(
    monkeypatch, machine_busy, own, share, busy):
  snapshots = iter([(100.0, 200.0, 10.0), (100.0 + machine_busy, 210.0, 10.0 + own)])
  monkeypatch.setattr(machine, "_cpu_snapshot", lambda: next(snapshots))
  monkeypatch.setattr(machine, "load_average", lambda: 1.8)   # lags: not what decides
  monkeypatch.setattr(machine.runtime, "available_cores", lambda: 2)
  result = machine.finish(machine.describe())
  assert result["other_work"] == pytest.approx(share) and result["busy"] == busy
  assert f"other work {share:.0%} of the CPU time" in machine.summary(result)


def test_cpu_times_are_read_from_this_machine():
  seconds = machine.machine_cpu_seconds()
  if seconds is None:
    pytest.skip("no /proc/stat on this platform")
  busy, total = seconds
  assert 0 < busy <= total
  assert machine.own_cpu_seconds() > 0


def test_attention_mode_compares_blockwise_and_standard():
  result = bench.run(_config(), mode="attention", sweeps=["seq_len=24"], repeats=1,
                     attention_block_size=8, log=lambda line: None)
  entry = result["sequence_lengths"]["24"]
  assert entry["checksum_difference"] <= 1e-4 * max(1.0, abs(entry["checksum"]))
  assert entry["standard"]["seconds"]["n"] == entry["blockwise"]["seconds"]["n"] == 1


def test_command_line_runs_and_refuses_bad_flags(tmp_path):
  output = str(tmp_path / "cli.json")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, "-m", "tfllm.cli.bench", "--mode=train",
             f"--config={REPO}/configs/gpt_tiny.py", "--config.model.num_layers=1",
             "--config.model.vocab_size=64", "--config.data.sequence_length=8",
             "--batch_size=2", "--steps=1", "--repeats=1", "--peak_flops=1e11",
             f"--output={output}"]
  done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "tokens/s" in done.stdout and "6*N + 12*L*H*Q*T" in done.stdout
  assert json.loads(open(output).read())["sequence_length"] == 8
  bad = subprocess.run(command[:4] + ["--sweep=width=1,2"], capture_output=True, text=True,
                       env=env, timeout=240)
  assert bad.returncode == 2
  assert "seq_len, num_layers, batch_size" in bad.stderr.strip().splitlines()[-1]
  # A model to time that is not there is a usage error too, not a runtime failure.
  missing = str(tmp_path / "no_export")
  bad = subprocess.run([sys.executable, "-m", "tfllm.cli.bench", "--mode=serve",
                        f"--litert={missing}"], capture_output=True, text=True, env=env,
                       timeout=240)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      f"tfllm-bench: error: litert={missing!r} holds no model.tflite; pass a version "
      "directory tfllm-export --format=litert wrote, e.g. /tmp/litert/sentiment/1")


def test_modes_refuse_what_they_cannot_measure():
  with pytest.raises(ValueError, match="export_dir"):
    bench.run(_config(), mode="serve", log=lambda line: None)
  with pytest.raises(ValueError, match="mode='predict' is not accepted"):
    bench.run(_config(), mode="predict", log=lambda line: None)
  with pytest.raises(ValueError, match="--compare=keras_hub is for train and generate"):
    bench.run(_config(), mode="attention", compare="keras_hub", log=lambda line: None)


@pytest.mark.slow
def test_serve_mode_times_a_token_classifier_and_then_its_export_as_it_is(tmp_path):
  from tests.export.conftest import export_config  # pylint: disable=import-outside-toplevel
  config = export_config("token_classification")
  exported = bench.run(config, mode="serve", export_dir=str(tmp_path / "ner"), batch_size=2,
                       repeats=2, log=lambda line: None)
  assert exported["task"] == "token_classification"
  assert exported["results"][2]["rows_per_s"] > 0
  version = str(tmp_path / "ner" / "1")
  as_is = bench.run(config, mode="serve", saved_model=version, batch_size=2, repeats=2,
                    log=lambda line: None)
  assert as_is["saved_model"] == version and as_is["results"][2]["p50_ms"] > 0
  # The export's base directory: the error names the version to pass.
  with pytest.raises(ValueError, match=f"holds no saved_model.pb; it holds versions 1: pass "
                                       f"{re.escape(version)}$"):
    bench.run(config, mode="serve", saved_model=str(tmp_path / "ner"), log=lambda line: None)


# A fake clock for the timed figures: `measure` reads only this clock, and it moves only when a
# training step runs, by that candidate's seconds per step. Each figure then has one right value.
FAKE_SECONDS_PER_STEP = {"tfllm": 0.25, "keras_hub": 0.5}


@pytest.fixture
def fake_step_clock(monkeypatch):
  """Makes every train step "take" FAKE_SECONDS_PER_STEP[candidate]; returns the list of
  `(candidate name, token_ids shape, labels shape)` of each step function made."""
  now = [0.0]
  made = []
  make_train_step = train.make_train_step

  def timed_step_maker(candidate, labels, jit_compile, **kwargs):
    step = make_train_step(candidate, labels, jit_compile, **kwargs)
    made.append((candidate.name, tuple(candidate.features["token_ids"].shape),
                 tuple(labels.shape)))

    def timed_step():
      now[0] += FAKE_SECONDS_PER_STEP[candidate.name]
      return step()

    return timed_step

  monkeypatch.setattr(train, "make_train_step", timed_step_maker)
  monkeypatch.setattr(measure, "time", types.SimpleNamespace(
      perf_counter=lambda: now[0], process_time=time.process_time))
  return made


def _train_flops_per_token(layers, length, vocab=100, positions=32, hidden=32, heads=4,
                           intermediate=64):
  """6N + 12*L*H*Q*T for `_config()`'s GPT-2 shape, N by hand without position embeddings."""
  n = _gpt2_parameters(vocab, positions, hidden, layers, intermediate) - positions * hidden
  return 6 * n + 12 * layers * heads * (hidden // heads) * length


def test_train_figures_follow_from_the_steps_timed_side_by_side(tmp_path, fake_step_clock):
  steps, repeats, peak = 2, 3, 1e11
  output = str(tmp_path / "train.json")
  bench.run(_config(), mode="train", compare="keras_hub", steps=steps, repeats=repeats,
            jit_compile=False, peak_flops=peak, output=output, log=lambda line: None)
  saved = json.loads(open(output).read())
  # Both sides built and timed on the same batch shape: [batch 2, sequence 16].
  assert fake_step_clock == [("tfllm", (2, 16), (2, 16)), ("keras_hub", (2, 16), (2, 16))]
  assert (saved["batch_size"], saved["sequence_length"], saved["steps"], saved["repeats"]) == (
      2, 16, steps, repeats)
  assert saved["shape"] == dict(num_layers=2, hidden_dim=32, num_heads=4, head_dim=8,
                                intermediate_dim=64, vocab_size=100, attention_block_size=0)
  assert saved["peak"] == dict(flops_per_second=peak, source="given", device="CPU")
  assert saved["formula"] == mfu.FORMULA
  for name, entry in saved["models"].items():
    seconds = FAKE_SECONDS_PER_STEP[name]
    # A round times exactly `steps` steps (no warm-up): seconds per step as the clock moved.
    assert entry["step_seconds"] == dict(min=seconds, median=seconds, max=seconds, n=repeats)
    tokens_per_second = 2 * 16 / seconds   # tokens of a step / its timed seconds
    assert entry["tokens_per_second"]["median"] == pytest.approx(tokens_per_second, rel=1e-12)
    assert entry["parameters"] == _gpt2_parameters(100, 32, 32, 2, 64)
    assert entry["flops_parameters"] == entry["parameters"] - 32 * 32
    assert entry["flops_per_token"] == _train_flops_per_token(layers=2, length=16)
    assert entry["mfu"]["median"] == pytest.approx(
        tokens_per_second * entry["flops_per_token"] / peak, rel=1e-12)
    assert entry["memory"]["peak_bytes"] > 0 and entry["step_cpu_seconds"]["n"] == repeats
  # tfllm's steps take half KerasHub's: tfllm/keras_hub tokens/s is 2 in every round.
  ratio = saved["ratios"]["tokens_per_second tfllm/keras_hub"]
  assert ratio == dict(min=2.0, median=2.0, max=2.0, n=repeats)
  assert set(saved["ratios"]) == {"tokens_per_second tfllm/keras_hub",
                                  "cpu time per step keras_hub/tfllm"}


def test_sweep_points_are_measured_at_their_values(tmp_path, fake_step_clock):
  output = str(tmp_path / "sweep.json")
  saved = bench.run(_config(), mode="train", sweeps=["seq_len=16,8", "num_layers=1,3"],
                    steps=1, repeats=1, jit_compile=False, peak_flops=1e11, output=output,
                    log=lambda line: None)
  assert json.loads(open(output).read())["sweeps"] == json.loads(json.dumps(saved["sweeps"]))
  by_length, by_layers = saved["sweeps"]
  assert [shape for _, shape, _ in fake_step_clock] == [(2, 8), (2, 16), (2, 16), (2, 16)]
  assert by_length["name"] == "seq_len" and by_layers["name"] == "num_layers"
  for point, length in zip(by_length["points"], [8, 16]):
    assert point["value"] == point["result"]["sequence_length"] == length
    assert point["tokens_per_second"]["median"] == pytest.approx(2 * length / 0.25)
    assert point["result"]["models"]["tfllm"]["flops_per_token"] == _train_flops_per_token(
        layers=2, length=length)
  for point, layers in zip(by_layers["points"], [1, 3]):
    assert point["value"] == point["result"]["shape"]["num_layers"] == layers
    tfllm = point["result"]["models"]["tfllm"]
    assert tfllm["parameters"] == _gpt2_parameters(100, 32, 32, layers, 64)
    assert tfllm["flops_per_token"] == _train_flops_per_token(layers=layers, length=16)
    assert point["mfu"] == tfllm["mfu"]
  # Step time does not grow on this clock: the fits find the constant and nothing else.
  for summary in (by_length, by_layers):
    fit = summary["step_time_fit"]
    np.testing.assert_allclose([fit["a"], fit["b"], fit["c"]], [0.25, 0.0, 0.0], atol=1e-9)


def test_generate_figures_follow_from_the_timed_seconds(monkeypatch):
  now = [0.0]

  def clock():   # each timed call "takes" 1.5 s: its start and end reads are 1.5 s apart
    now[0] += 1.5
    return now[0]

  monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=clock,
                                                             process_time=time.process_time))
  result = bench.run(_config(), mode="generate", sweeps=["batch_size=2,3"], prompt_length=4,
                     new_tokens=5, repeats=1, jit_compile=False, log=lambda line: None)
  assert set(result["batch_sizes"]) == {"2", "3"}
  for batch, entry in result["batch_sizes"].items():
    figures = entry["tfllm"]
    assert figures["seconds_per_call"]["median"] == pytest.approx(1.5)
    assert figures["new_tokens_per_second"]["median"] == pytest.approx(int(batch) * 5 / 1.5)
    assert figures["seconds_per_token"]["median"] == pytest.approx(1.5 / 5)
