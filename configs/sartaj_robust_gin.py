"""sartaj_robust plus GIN (train_augment.gin): random shallow-network intensity remapping.

Sartaj's Testing source differs from its Training source in how tissues look (BUILD_NOTES:
its gliomas are bright and ring-enhancing, Training's dark and diffuse), the kind of shift
a different sequence makes. GIN (brainjax/augmentations.py) is the single-source
domain-generalisation augmentation built for that: per example, a random convolutional
network re-maps tissue contrast, non-monotonically, so brightness stops being a shortcut
to the label and shape has to carry it. Everything else is sartaj_robust's recipe.
Data: --config.manual_dir=/path/to/sartaj (folder or Kaggle zip).
"""

from configs import sartaj_robust


def get_config():
    c = sartaj_robust.get_config()
    c.train_augment.gin = (0.0, 1.0)  # GIN's mixing weight, uniform as in the paper
    return c
