"""VGG16 with ImageNet weights, block5 unfrozen (partial fine-tuning), lower learning rate."""

from configs import transfer


def get_config():
    c = transfer.get_config("vgg16")
    c.trainable = ("^head/", "^backbone/block5_")
    c.optimizer.learning_rate = 1e-4
    return c
