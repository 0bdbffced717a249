"""Shared test configuration.

Hypothesis: on CI (``CI`` set) examples are derandomized, so a submission's result does not depend
on luck; locally each run explores new examples (and keeps failures in ``.hypothesis/``).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
