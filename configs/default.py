"""Default config: the main job on the embedded `brain_phantom` dataset, CPU-friendly.

Tiny CNN from scratch (no weight file needed), 64 px, per-image z-scoring, a scan-quality
head, robustness training against every MRI corruption family on 70% of the images. See
BUILD_NOTES.md for why these defaults (time and accuracy measured side by side on the
2-core reference machine).
"""

import ml_collections


def seed_degrade() -> ml_collections.ConfigDict:
    """The seed project's recipe: with prob 0.5, a random non-empty subset of noise, blur
    and downsampling, in random order, levels uniform in the ranges. Any corruption of
    brainjax.degrade.NAMES joins a recipe with a (low, high) range; recipe: none | chain |
    ordered | one | augmix (brainjax/degrade.py `augment`)."""
    return ml_collections.ConfigDict(dict(
        flip_lr=True, recipe="chain", prob=0.5, max_ops=3, augmix_width=3,
        gaussian_noise=(0.02, 0.2),  # noise std on [0, 1]
        gaussian_blur=(0.5, 5.0),  # sigma in px at 224 px (scaled to the image size)
        downsample=(0.3, 0.8),  # kept fraction of the side
    ))


def mri_degrade() -> ml_collections.ConfigDict:
    """The default: 70% of the images get 1-3 of the nine corruptions that change what
    the scan shows (contrast is invisible after z-scoring), each over the evaluation's
    severities 1-5, applied in acquisition order ('ordered': the chain's draw, each
    corruption computed once). BUILD_NOTES compares it with the seed recipe."""
    c = seed_degrade()
    c.update(recipe="ordered", prob=0.7, gaussian_noise=(0.02, 0.4), gaussian_blur=(0.5, 6.0),
             downsample=(0.25, 0.8))
    for name, levels in (("rician_noise", (0.02, 0.2)), ("motion_blur", (4.0, 30.0)),
                         ("kspace_undersample", (0.12, 0.6)), ("motion_ghosting", (2.0, 15.0)),
                         ("bias_field", (0.1, 0.7)), ("jpeg", (7.0, 40.0))):
        c[name] = levels
    return c


def source(name: str, dataset: str, **fields) -> dict:
    """One entry of config.sources, every field given: `name` (short, used in reports and
    in holdout_source), `dataset` (a tfds name, or image_folder with manual_dir),
    `class_map` (its class names -> the run's: 'glioma_tumor=glioma,...'), `weight` (its
    share of each training epoch, relative to the other sources), its own dataset fields,
    and the split specs of that source read as the run's train / validation / test."""
    entry = dict(name=name, dataset=dataset, data_dir=None, manual_dir=None, class_map="", weight=1.0,
                 download="", test_fraction=0.2, train_split="train[:90%]", val_split="train[90%:]",
                 test_split="test")
    unknown = sorted(set(fields) - set(entry))
    if unknown:
        raise ValueError(f"source({name!r}): unknown fields {unknown}; known: {sorted(entry)}")
    return {**entry, **fields}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data (tfds). data_dir None -> tfds default (~/tensorflow_datasets).
    c.dataset = "brain_phantom"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.manual_dir = ml_collections.config_dict.placeholder(str)
    # Your own scans: --config.dataset=image_folder --config.manual_dir=DIR (one sub-folder per
    # class; DIR/test/ if you have a test set, else a seeded `test_fraction` of the files).
    # class_map renames or merges folders: 'no_tumor=normal,glioma_tumor=tumor'.
    c.class_map = ""
    c.test_fraction = 0.2
    # 'kaggle': fetch brain_tumor_mri/sartaj or /nickparvar into manual_dir (kagglehub).
    c.download = ""
    # Volumes (NIfTI) are cut into slices along slice_axis (axial | coronal | sagittal);
    # slices with less than volume_min_foreground of their pixels lit are skipped
    # (brainjax/data/decode.py, for builds, predict and eval.ood_dirs alike).
    c.slice_axis = "axial"
    c.volume_min_foreground = 0.05
    # Several sources in one run (brainjax/data/multi_source.py): a tuple of `source(...)`
    # entries; the dataset fields above are then each source's own, the run's splits are
    # the mixed dataset's train / validation / test, and holdout_source names a source to
    # leave out of training and score on every image (report["holdout"]).
    c.sources = ()
    c.holdout_source = ""
    c.train_split = "train[:90%]"
    c.val_split = "train[90%:]"
    c.test_split = "test"
    c.image_size = 64
    c.batch_size = 64  # global, divisible by the device count
    c.eval_batch_size = 128
    c.shuffle_buffer = 50_000
    c.prefetch = 2
    # The training split is cut into input_shards contiguous shards; each process reads,
    # decodes and caches only its own (input_shards must be a multiple of the process
    # count, batch_size a multiple of input_shards). The training order depends on
    # input_shards, never on the process or device count.
    c.input_shards = 8
    # pmap: jax.pmap over local devices (state with a device axis). jit: jax.jit +
    # shard_map over a mesh of all devices of all processes (global arrays). Same model.
    c.parallel = "pmap"

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.backbone = "tiny"  # tiny | vgg16 | vgg19 | resnet50v2
    # Options of the chosen backbone live under its name.
    c.model.tiny = ml_collections.ConfigDict(dict(widths=(12, 24, 48, 96), convs_per_block=2, batchnorm=True))
    # VGG 3x3 convolutions: auto (Winograd on CPU for >= 256 output channels) | direct | winograd.
    c.model.vgg16 = ml_collections.ConfigDict(dict(conv_impl="auto"))
    c.model.vgg19 = ml_collections.ConfigDict(dict(conv_impl="auto"))
    c.model.head = "enhanced"  # baseline | enhanced
    c.model.head_hidden = (256, 128)
    c.model.dropout = 0.3
    c.model.weights = "none"  # none | imagenet | /path/to/keras_weights.h5
    c.model.weights_dir = ml_collections.config_dict.placeholder(str)  # where `imagenet` looks first (then ~/.keras/models)
    # Per-image intensity standardisation, the first step of the model's input path
    # (brainjax/intensity.py): none | zscore | zscore_foreground | percentile.
    c.model.standardize = "zscore"
    c.model.standardize_percentiles = (0.5, 99.5)  # 'percentile': this range maps to [0, 1]
    # Scan-quality head: predicts which corruptions the training step applied and how
    # strongly (brainjax/degrade.py `strength`), from the backbone features; its loss is
    # weighted by quality_loss_weight. Parameters live under 'quality_head/'.
    # On by default: side by side on this job it raised clean and corruption accuracy
    # (BUILD_NOTES) besides giving `quality=` in --mode=predict.
    c.model.quality_head = ml_collections.ConfigDict(dict(enabled=True, hidden=(64,)))
    c.quality_loss_weight = 0.5
    c.model.base_batchnorm_train = True  # the tiny CNN trains from scratch
    c.model.dtype = "float32"
    # Regexes over parameter paths ('backbone/block1_conv1/kernel', 'head/logits/bias').
    # '^head/' freezes the base; '.*' fine-tunes everything.
    c.trainable = (".*",)

    # Optimisation.
    c.num_epochs = 20
    c.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-3, weight_decay=0.0, label_smoothing=0.0,
                                                 grad_clip_norm=0.0))
    c.schedule = ml_collections.ConfigDict(dict(name="plateau", factor=0.5, patience=2, min_delta=1e-4,
                                                min_lr=1e-5, warmup_epochs=0))
    c.early_stopping = ml_collections.ConfigDict(dict(enabled=True, patience=8, min_delta=1e-4))
    c.log_every_steps = 10
    # Step-level checkpoints (async; every epoch end is saved too): at most this many
    # steps / seconds of work are lost to a kill -9. SIGTERM/SIGINT save at the current
    # step. 0 disables a trigger. 10 min suits a long GPU run; CPU demo epochs are short.
    c.checkpoint_every_steps = 0
    c.checkpoint_every_seconds = 600.0
    # What a save hands orbax: "device" (a device-side copy; orbax does the host
    # transfer), "host" (a host copy made here first) or "auto": device on GPU/TPU, host
    # on the CPU backend, where orbax's per-array handling of device arrays made saves
    # 6x slower to hand over (BUILD_NOTES).
    c.checkpoint_from = "auto"

    # Feature cache (frozen base + fixed inputs only): the base's pooled features are
    # computed once and the head trains on them; fixed_degraded_copy adds one fixed
    # degraded copy of every training image (the seed project's protocol). See
    # brainjax/feature_cache.py and configs/seed_protocol.py.
    c.feature_cache = False
    c.fixed_degraded_copy = False

    # Degradation during training (on device, per example): every MRI corruption family,
    # over the evaluation's severity range (`mri_degrade` below). Configs measured with the
    # seed project's recipe (transfer, sartaj_tiny, smoke) set `seed_degrade()` instead.
    c.train_degrade = mri_degrade()

    # Appearance augmentations (brainjax/augmentations.py), per example on device, before
    # the degradations above; prob 0 turns them off. Each op is applied with prob `prob`.
    c.train_augment = ml_collections.ConfigDict(dict(
        prob=0.0, gamma=(0.7, 1.5), brightness=(-0.1, 0.1), contrast=(0.6, 1.4), bias_field=(0.0, 0.4),
        rotate_deg=10.0, scale=(0.9, 1.1), translate=0.05))
    # GIN random intensity network's mixing range, e.g. (0.0, 1.0); None: off.
    c.train_augment.gin = ml_collections.config_dict.placeholder(tuple)
    # Probability of a random smooth, possibly non-monotonic intensity map over the head
    # (augmentations.contrast_remap: for MRI sequences never seen in training); 0: off.
    c.train_augment.contrast_remap = 0.0

    # Evaluation: clean + each corruption at each severity (brainjax.degrade constants).
    # reference_report: report.json of a reference model (e.g. this config trained with
    # train_degrade.recipe=none) -> corruption errors and mCE in the summary.
    c.eval = ml_collections.ConfigDict(dict(
        corruptions=("gaussian_noise", "rician_noise", "gaussian_blur", "motion_blur", "downsample",
                     "kspace_undersample", "motion_ghosting", "bias_field", "contrast", "jpeg"),
        severities=(1, 2, 3, 4, 5)))
    c.eval.reference_report = ml_collections.config_dict.placeholder(str)
    # Test-time BatchNorm adaptation (AdaBN, brainjax/evaluators/adapt.py): score each
    # evaluated split with BatchNorm statistics re-estimated on its own unlabelled images,
    # as a new hospital can do with its scans. Transductive: report it as its own protocol.
    c.eval.adapt_batchnorm = False
    # Calibration (temperature fitted on val_split) and selective prediction: the abstention
    # rule keeps a prediction when its score reaches a threshold fitted on val_split for
    # abstain_target_accuracy. Rules: max_prob (calibrated top probability) | quality
    # (that times the quality head's estimate; needs model.quality_head.enabled) | ood (the
    # OOD score below) | ood_max_prob (the default: abstain when either max_prob or ood does).
    c.eval.calibration = True
    c.eval.abstain_rule = "ood_max_prob"
    c.eval.abstain_target_accuracy = 0.95
    # Out-of-distribution score (evaluators/ood.py): 'mahalanobis_l2' (class-conditional
    # Gaussian on the L2-normalised pooled backbone features, fitted on train_split; chosen
    # on sartaj_robust, BUILD_NOTES), 'mahalanobis' (unnormalised), 'energy',
    # 'max_prob', or ''.
    # The threshold keeps ood_keep of validation; abstain_rule 'ood' / 'ood_max_prob' use it.
    # ood_dirs: folders of scans from other sites / sequences, scored in report["ood"] (the
    # default is skipped when absent).
    c.eval.ood_method = "mahalanobis_l2"
    c.eval.ood_keep = 0.95
    c.eval.ood_shrinkage = 0.1
    c.eval.ood_dirs = ("../shared/data/other_sequences",)
    c.eval.extra_splits = ()  # more splits to report (e.g. validation, test_dedup)
    # The seed project's protocol: each image + one fixed degraded copy, scored mixed and
    # separately (set to a split name, e.g. 'validation', to report it).
    c.eval.seed_protocol_split = ""
    # The evaluators that write report.json, in order (modules under brainjax/evaluators/,
    # each defining an `Evaluator`; brainjax/evaluators/common.py). A new one is one file
    # plus its name here.
    c.eval.evaluators = ("robustness", "calibration", "ood", "selective", "quality", "other_splits", "seed_protocol",
                         "sources", "holdout")
    return c
