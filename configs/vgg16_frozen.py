"""vgg16 with ImageNet weights, frozen base, enhanced head (the card's recipe)."""

from configs import transfer


def get_config():
    return transfer.get_config("vgg16")
