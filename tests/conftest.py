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


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS) on loopback for the whole session, stopped by its own PID."""
    from s3_server import SeaweedS3, require_weed

    require_weed()
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()
