"""The card's recipes on real data: ImageNet backbone (frozen), 224 px, Sartaj splits.

  python launch.py --workdir=runs/s_vgg16 --config=configs/sartaj_transfer.py:vgg16,enhanced

The part after ':' is "<backbone>,<head>" (vgg16 | vgg19 | resnet50v2; baseline | enhanced).
Needs the published ImageNet weight file; without it the run stops with instructions.
"""

from configs import sartaj_tiny, transfer


def get_config(arg: str = "vgg16,enhanced"):
    backbone, head = (arg.split(",") + ["enhanced"])[:2]
    c = transfer.get_config(backbone)
    real = sartaj_tiny.get_config()
    for key in ("dataset", "manual_dir", "train_split", "val_split", "test_split"):
        c[key] = real[key]
    c.eval.extra_splits = real.eval.extra_splits
    c.eval.seed_protocol_split = real.eval.seed_protocol_split
    c.model.head = head
    return c
