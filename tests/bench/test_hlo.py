"""`tfllm-bench --mode=hlo`: costs read from HLO text (`tfllm.bench.hlo`)."""

from __future__ import annotations

import pytest

from tfllm import config as config_lib
from tfllm.bench import hlo
from tfllm.bench import run as bench
from tfllm.models.config import model_preset

# A hand-written scheduled module: a convert, a dot, a loop fusion (whose inside is not
# executed traffic), a custom call, and a tuple result.
_MODULE = """HloModule m, is_scheduled=true

%fused_add (p0: f32[4,8], p1: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  ROOT %add = f32[4,8]{1,0} add(f32[4,8]{1,0} %p0, f32[4,8]{1,0} %p1)
}

ENTRY %main (a: f32[4,16], b: bf16[16,8]) -> (f32[4,8], f32[4,8]) {
  %a = f32[4,16]{1,0} parameter(0)
  %b = bf16[16,8]{1,0} parameter(1)
  %cvt = f32[16,8]{1,0} convert(bf16[16,8]{1,0} %b)
  %dot = f32[4,8]{1,0} dot(f32[4,16]{1,0} %a, f32[16,8]{1,0} %cvt), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %fusion = f32[4,8]{1,0} fusion(f32[4,8]{1,0} %dot, f32[4,8]{1,0} %dot), kind=kLoop, calls=%fused_add
  %cc = f32[4,8]{1,0} custom-call(f32[4,8]{1,0} %fusion), custom_call_target="Foo"
  ROOT %t = (f32[4,8]{1,0}, f32[4,8]{1,0}) tuple(%fusion, %cc)
}
"""


@pytest.mark.parametrize("text", [_MODULE, _MODULE.replace("%", "")],
                         ids=["percent_names", "bare_names"])
def test_costs_of_a_hand_written_module(text):
  result = hlo.analyze(text, text)
  assert result["dot_flops"] == 2 * 4 * 8 * 16
  # convert 256 + 512; dot 256 + 512 + 128; fusion 3 x 128; custom call 2 x 128.
  assert result["bytes_accessed"] == 768 + 896 + 384 + 256
  assert result["bytes_by_kind"] == {"dot": 896, "convert": 768, "fusion:kLoop": 384,
                                     "custom-call": 256}
  assert (result["fusions"], result["custom_calls"]) == (1, 1)
  assert result["custom_call_targets"] == {"Foo": 1}
  # After the dot: a 256 + b 256 (arguments) + cvt 512 + dot 128; cvt dies at the dot.
  assert result["peak_buffer_bytes"] == 1152
  roofline = result["roofline"]
  assert roofline["bound"] == "memory"
  assert roofline["seconds"] == pytest.approx(2304 / 3.35e12)
  assert roofline["compute_seconds"] == pytest.approx(1024 / 989e12)


def test_shape_bytes_of_tuples_and_tokens():
  assert hlo.shape_bytes("(f32[2,3]{1,0}, bf16[4]{0}, s32[])") == 24 + 8 + 4
  assert hlo.shape_bytes("token[]") == 0


def _config():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=64, num_layers=2, hidden_dim=16, num_heads=2,
                      intermediate_dim=32, max_sequence_length=8, dropout=0.0)
  config.task.name = "causal_lm"
  config.data.sequence_length = 8
  config.train.global_batch_size = 2
  return config


def test_train_step_costs_of_tfllm_and_keras_hub_side_by_side():
  lines = []
  result = bench.run(_config(), mode="hlo", compare="keras_hub", log=lines.append)
  tfllm, hub = result["models"]["tfllm"], result["models"]["keras_hub"]
  # Forward, input gradients and weight gradients: 3 x (2 x matmul weights + attention's
  # QK^T and AV, 4 T d per layer) per token; the tied head is a matmul, the lookup is not.
  d, ff, vocab, layers, length, tokens = 16, 32, 64, 2, 8, 16
  matmul_weights = layers * (4 * d * d + 2 * d * ff) + d * vocab
  expected = 3 * tokens * (2 * matmul_weights + layers * 4 * length * d)
  assert tfllm["dot_flops"] == hub["dot_flops"] == expected
  for model in (tfllm, hub):
    assert model["bytes_accessed"] > 0 and model["fusions"] > 0
    assert 0 < model["peak_buffer_bytes"] <= model["bytes_accessed"]
  assert "\nbytes accessed tfllm/keras_hub: " in "\n".join(lines), lines


def test_hlo_mode_refuses_a_sweep():
  with pytest.raises(ValueError, match="hlo mode takes no --sweep"):
    bench.run(_config(), mode="hlo", sweeps=["seq_len=8,16"], log=lambda line: None)
