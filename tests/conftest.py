import os

import faiss
import numpy as np
import pytest
import torch

import procs

# The tests use tiny tensors: one intra-op thread is deterministic and avoids threads spinning
# against each other (on a busy 2-core machine two threads ran many times slower than one).
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def pytest_sessionstart(session):
    # the fork server behind procs.run / procs.Popen loads its libraries while the tests are collected
    procs.start_server()


def pytest_sessionfinish(session, exitstatus):
    procs.stop_server()


def pytest_collection_modifyitems(config, items):
    slow_ok = os.environ.get("REIDKIT_SLOW") == "1"
    gpu_ok = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow: set REIDKIT_SLOW=1"))
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def with_overrides(cfg: dict, over: dict) -> dict:
    """``cfg`` with keyword overrides applied: ``section__key=value`` sets ``cfg[section][key]``."""
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[key] = value
    return cfg
