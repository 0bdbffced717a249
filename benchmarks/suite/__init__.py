"""The suite (``python -m benchmarks suite``): every system side by side on three datasets.

``run``      the driver: phases, the reference run twice, profiles of missed targets, outputs
``phase``    one measurement subprocess (``python -m benchmarks.suite.phase TASK.json``)
``report``   Markdown tables, PNG charts, the targets and the "where tsfs is behind" section
``sys_*``    one module per system: how it writes the sources and how each of its readers reads
             (``sys_pyarrow`` is also the raw reference of ``core`` and ``loader``, ``sys_tsfs``
             their tsfs writer)
"""
