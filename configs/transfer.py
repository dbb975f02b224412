"""Base for ImageNet transfer learning: frozen Keras-weight backbone + enhanced head, 224 px.

Variants (vgg16_frozen.py, ...) import this and set the backbone. Needs the published
weight file (README: ImageNet weights); without it the run stops with instructions.
"""

from configs import default


def get_config(backbone: str = "vgg16"):
    c = default.get_config()
    c.image_size = 224
    c.batch_size = 32
    c.eval_batch_size = 64
    c.model.backbone = backbone
    c.model.weights = "imagenet"
    c.model.head = "enhanced"
    c.model.head_hidden = (1024, 512)
    c.model.dropout = 0.5
    c.train_degrade = default.seed_degrade()  # the card's recipe
    c.model.base_batchnorm_train = False  # frozen BN keeps the ImageNet statistics
    c.trainable = ("^head/",)
    # No quality head: its parameters are outside '^head/' and the feature cache
    # (configs/seed_protocol.py) has no degradation targets; add '^quality_head/' to
    # trainable to try it on a frozen base.
    c.model.quality_head.enabled = False
    c.num_epochs = 20
    return c
