"""configs/smoke.py over two small phantom sites (T1-like and T2-like): the multi-source
tests' config."""

from configs import default, smoke


def get_config():
    c = smoke.get_config()
    c.dataset = "multi_source"
    c.sources = (default.source("t1", "brain_phantom/small_t1"), default.source("t2", "brain_phantom/small_t2"))
    c.train_split, c.val_split, c.test_split = "train", "validation", "test"
    return c
