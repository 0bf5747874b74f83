"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The unit tests run many small tensor ops: one thread is nearly as fast on a free machine and
    # avoids OpenMP stalls (10x and more, measured) when other processes share the two CPU cores.
    # Subprocess tests (training, DDP) start their own interpreters and are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
