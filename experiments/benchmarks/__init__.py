"""The benchmarks: the scripts the tables of docs/benchmarks.md come from (quality against ground truth
and baselines, step and whole-scene timings, batch throughput), each writing the JSON those tables cite.
"""
