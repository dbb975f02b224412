"""configs/sartaj_tiny.py trained without degradation: the clean baseline (and the
reference model for mCE)."""

from configs import sartaj_tiny


def get_config():
    c = sartaj_tiny.get_config()
    c.train_degrade.recipe = "none"
    return c
