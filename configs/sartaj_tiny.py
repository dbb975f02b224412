"""Real data, CPU-sized: the Sartaj Kaggle set, tiny CNN from scratch at 64 px.

Trains on the stratified 80% of Training (`train_sub`), early-stops on the held-out 20%
(`validation`), and reports the official Testing split plus the deduplicated one (and the
validation split), clean and under every corruption, with bootstrap CIs.
Data: --config.manual_dir=/path/to/sartaj (folder or Kaggle zip); the default is the
shared copy next to the repository.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.dataset = "brain_tumor_mri/sartaj"
    c.manual_dir = "../shared/data/sartaj"
    c.train_split = "train_sub"
    c.val_split = "validation"
    c.test_split = "test_dedup"
    c.eval.extra_splits = ("test", "validation")
    c.eval.seed_protocol_split = "validation"
    # The issue-13 baseline: no intensity standardisation (configs/sartaj_robust.py has it).
    c.model.standardize = "none"
    # ... and the phantom's first tiny CNN and training recipe, as measured in BUILD_NOTES
    c.model.tiny.widths = (8, 16, 32, 64)
    c.train_degrade = default.seed_degrade()
    c.model.quality_head.enabled = False
    c.num_epochs = 40
    c.early_stopping.patience = 8
    return c
