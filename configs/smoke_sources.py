"""configs/smoke.py over two small phantom sites (T1-like and T2-like): the multi-source
tests' config."""

from configs import default, smoke


def get_config():
    c = smoke.get_config()
    c.dataset = "multi_source"
    # t1 fills 2/3 of each training epoch (the sites are the same size): the weighted draw
    # runs in every multi-source test
    c.sources = (default.source("t1", "brain_phantom/small_t1", weight=2.0),
                 default.source("t2", "brain_phantom/small_t2", weight=1.0))
    c.train_split, c.val_split, c.test_split = "train", "validation", "test"
    return c
