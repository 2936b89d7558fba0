"""tfllm: build, train, fine-tune and serve Transformer language models with TensorFlow and Keras 3."""

__version__ = "0.1.0"
