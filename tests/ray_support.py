"""Run in every Ray worker process of the cluster tests (``worker_process_setup_hook``): registers
``test-slow``, the brightness method taking a fixed time per group, so that a test can act mid-run;
a group whose name starts with ``poison`` kills the worker process computing it.

The worker finds its weights through COSAL_HOME and COSAL_MANIFEST, passed in the runtime environment.
"""

from __future__ import annotations

import os
import sys
import time
import types

from cosal_cli import methods
from cosal_cli.methods import MethodCard
from tests.conftest import BrightnessMethod

MODULE = "cosal_test_slow_method"
SECONDS_PER_GROUP = float(os.environ.get("COSAL_TEST_SECONDS_PER_GROUP", "0.6"))


class SlowMethod(BrightnessMethod):
    name = "test-slow"

    def predict_group(self, images, sources=None):
        if sources is not None and sources.group.startswith("poison"):
            os._exit(3)  # a group that kills its worker process every time (as a segfaulting decoder would)
        time.sleep(SECONDS_PER_GROUP)
        return super().predict_group(images, sources)


def register() -> None:
    module = types.ModuleType(MODULE)
    module.Method = SlowMethod
    sys.modules[MODULE] = module
    methods.CARDS["test-slow"] = MethodCard("test-slow", "test", "test", MODULE)
