"""Sartaj + Figshare in one run, deduplicated across the two (brainjax/data/provenance.py).

Figshare (Cheng et al., CC BY 4.0: J. Cheng, "brain tumor dataset", figshare 2017,
doi:10.6084/m9.figshare.1512427; Cheng et al., PLoS ONE 10(10): e0140381, 2015 and
11(6): e0157112, 2016) is where most of Sartaj's tumour images come from, so the build
finds ~2,290 of its slices in Sartaj and keeps each copy in training only; the per-source
reports (report["sources"]) are computed without them. Figshare has no no_tumor class,
and no patient IDs in this copy: its within-source split is by slice, so its in-source
figures are optimistic. The recipe is configs/sartaj_robust.py's.

  python launch.py --config=configs/multisite.py --workdir=runs/multisite
  python launch.py --config=configs/multisite.py --workdir=runs/multisite_loso --mode=loso
"""

from configs import default, sartaj_robust

def get_config():
    c = sartaj_robust.get_config()
    c.dataset = "multi_source"
    c.manual_dir = None
    folder_splits = dict(train_split="train_sub", val_split="validation", test_split="test_dedup")
    c.sources = (
        default.source("sartaj", "brain_tumor_mri/sartaj", manual_dir="../shared/data/sartaj",
                       **folder_splits),  # the builder already names its classes glioma, meningioma, ...
        default.source("figshare", "image_folder", manual_dir="../shared/data/figshare", **folder_splits),
    )
    c.train_split, c.val_split, c.test_split = "train", "validation", "test"
    c.eval.extra_splits = ()
    c.eval.seed_protocol_split = ""
    return c
