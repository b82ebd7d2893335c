"""Benchmarks of relm against what a user would pick instead, on generated data (`python -m bench --help`).

The harness (bench.harness) finds every module in bench/cases, prepares its data, runs each (case, implementation,
size) in a fresh process (bench.worker) and prints a Markdown table of the figures and their ratios against the
reference implementation. docs/performance.md describes the cases and how to read the output.
"""
