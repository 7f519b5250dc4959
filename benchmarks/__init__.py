"""Benchmarks of the encouraging loss: ``python -m benchmarks.bench_loss`` (the loss alone) and
``python -m benchmarks.bench_train`` (fairseq-train throughput and memory)."""
