"""TF Serving warm-up records: `assets.extra/tf_serving_warmup_requests`.

A TFRecord file of `PredictionLog` protos (from `tensorflow-serving-api`); TF Serving replays
them when it loads a version, before the version takes traffic, so the first real request
does not pay for graph initialization (and XLA compilation, when exported with it).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"


def prediction_logs(requests: Dict[str, Dict[str, np.ndarray]]):
  """`PredictionLog` protos, one Predict request per signature.

  Args:
    requests: signature name -> input name -> value (numpy, the signature's dtype).
  """
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

  logs = []
  for signature, inputs in requests.items():
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name=signature))
    for name, value in inputs.items():
      request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    logs.append(prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def write_warmup_requests(path: str, requests: Dict[str, Dict[str, np.ndarray]]) -> str:
  """Writes the warm-up TFRecord at `path`; returns `path`."""
  with tf.io.TFRecordWriter(path) as writer:
    for log in prediction_logs(requests):
      writer.write(log.SerializeToString())
  return path
