"""Benchmarks of seismo against blackbox_exporter, run by hand (docs/benchmarks.md).

python -m bench.probe_throughput
python -m bench.check_scale
python -m bench.timing_truth
"""
