"""Pieces of ``benchmarks/bench_suite.py``: one module per system, plus the data, harness and report.

``data``     the three datasets (image-like, tabular, token sequences): generation, sources on disk
``harness``  timing, peak RSS, consuming and verifying batches (standard library + numpy only, so the
             Petastorm virtualenv imports it too)
``phase``    the entry point of one measurement subprocess
``sys_*``    one module per system: how it writes the sources and how each of its readers reads
``report``   Markdown tables, PNG charts, the targets and the "where tsfs is behind" section
"""
