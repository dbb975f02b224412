"""brainjax launcher: flags -> config -> train / evaluate / predict.

  python launch.py --workdir=/tmp/brainjax                       # train + evaluate (default config)
  python launch.py --workdir=... --config=configs/smoke.py --config.num_epochs=3
  python launch.py --workdir=... --mode=evaluate                 # re-evaluate the best checkpoint
  python launch.py --workdir=... --mode=predict --images=a.jpg,b.png
  python launch.py --workdir=... --mode=gallery --images=x.jpg   # every corruption x severity
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TF's C++ INFO lines

from brainjax import xla_flags  # noqa: E402  (no JAX import: flags must precede the backend)

xla_flags.apply_cpu_defaults()

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "gallery"], "What to do.")
flags.DEFINE_list("images", [], "Image files for --mode=predict / --mode=gallery.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-process clusters).")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/tfds chatter
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("brainjax").setLevel(logging.INFO)
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only: keep TF off the accelerators
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize()
    from brainjax import run

    sys.exit(run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images))


if __name__ == "__main__":
    app.run(main)
