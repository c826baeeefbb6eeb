"""Toy-world tests train tiny models: one torch thread for all of them.

A 32- or 64-wide model gains nothing from a second thread, and on a busy 2-core machine two
threads spin-wait: θ₀'s smoke fixture took 6.5 s with one thread and over 80 s with two under
load. Restored after the package, so other tests keep the default.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
