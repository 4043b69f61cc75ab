"""Fixtures for tests against real components: libvirtd and QEMU inside lab
hosts (network namespaces), the host agent, and the engine."""

import os
import sys

# The shared test helpers (the served engine API) live in tests/support.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))

from agent_fixtures import *  # noqa: F403  agents running inside lab hosts
from engine_fixtures import *  # noqa: F403  an engine directory, CA and database
from lab_fixtures import *  # noqa: F403  lab hosts with their own libvirtd and sshd
