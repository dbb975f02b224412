"""The seed project's training protocol, run fast with a feature cache.

Frozen ImageNet VGG16 (or another backbone) + enhanced head, 224 px; every training image
plus one fixed degraded copy (random 1-3 of noise / blur / downsampling, fixed per image);
Adam 1e-3, batch 32, 20 epochs, no per-step augmentation. Because the base is frozen and
the inputs are fixed, the base's pooled features are computed once and the head trains on
them (brainjax/feature_cache.py): the same model as the uncached path, in a fraction of
the time.

  python launch.py --workdir=runs/seed_vgg16 --config=configs/seed_protocol.py:sartaj,vgg16

Argument: "<data>,<backbone>" with data = phantom | sartaj (../shared/data/sartaj or
--config.manual_dir) and backbone = vgg16 | vgg19 | resnet50v2. Needs the published
ImageNet weight file; without it the run stops with instructions.
"""

from configs import sartaj_transfer, transfer


def get_config(arg: str = "phantom,vgg16"):
    data, backbone = (arg.split(",") + ["vgg16"])[:2]
    if data not in ("phantom", "sartaj"):
        raise ValueError(f"configs/seed_protocol.py: data must be 'phantom' or 'sartaj', got {data!r}")
    c = transfer.get_config(backbone) if data == "phantom" else sartaj_transfer.get_config(f"{backbone},enhanced")
    c.feature_cache = True
    c.fixed_degraded_copy = True
    c.train_degrade.recipe = "none"
    c.train_degrade.flip_lr = False
    c.num_epochs = 20
    c.schedule.name = "constant"
    c.early_stopping.enabled = False  # the seed trains 20 epochs; the best val_loss epoch is kept
    c.eval.seed_protocol_split = c.eval.seed_protocol_split or c.val_split
    return c
