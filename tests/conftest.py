"""Suite-wide settings: one torch thread (tiny tensors run faster and steadier without a thread pool) and a
`gpu` marker that skips where torch sees no CUDA device; the fuzz suites' fixtures."""
import pytest
import torch
from fuzzing import case_dir, tiny  # noqa: F401  (fixtures of the fuzz suites, test_fuzz*.py)

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _drop_glog_handlers():
    """A test that runs a command in-process (init_log) leaves a handler on pytest's captured stderr, which
    pytest closes after the test: later tests' log lines would hit a closed file."""
    yield
    import logging

    logger = logging.getLogger("caffelike")
    for handler in [h for h in logger.handlers if getattr(h, "_caffelike", False)]:
        logger.removeHandler(handler)
    logger.propagate = True
