"""Data: tokenizers (`tokenizers`), raw sources (`sources`), TFDS builders for the offline
corpora (`datasets`), tf.data input pipelines per task (`pipelines`), and their throughput
(`throughput`). See docs/data.md."""
