"""Tiny, seconds-long config for tests: small phantom, 32 px, narrow tiny CNN."""

from configs import default


def get_config():
    c = default.get_config()
    c.dataset = "brain_phantom/small"
    c.image_size = 32
    c.batch_size = 32
    c.eval_batch_size = 48
    c.model.tiny.widths = (8, 16)
    c.train_degrade = default.seed_degrade()  # three cheap corruptions keep the tests fast
    c.model.tiny.convs_per_block = 1
    c.model.tiny.batchnorm = False
    c.model.base_batchnorm_train = False
    c.model.head_hidden = (32,)
    c.model.quality_head.enabled = False  # tests/test_quality.py turns it on where it is tested
    c.model.dropout = 0.0
    c.num_epochs = 2
    c.log_every_steps = 2
    c.eval.corruptions = ("gaussian_noise", "gaussian_blur", "downsample")
    c.eval.severities = (1, 5)
    c.eval.ood_dirs = ()  # tests do not depend on ../shared
    return c
