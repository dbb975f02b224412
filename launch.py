"""brainjax launcher: flags -> config -> train / evaluate / predict.

  python launch.py --workdir=/tmp/brainjax                       # train + evaluate (default config)
  python launch.py --workdir=... --config=configs/smoke.py --config.num_epochs=3
  python launch.py --workdir=... --mode=evaluate                 # re-evaluate the best checkpoint
  python launch.py --workdir=... --mode=predict --images=a.jpg,b.png [--explain]   # + Grad-CAM PNGs
  python launch.py --workdir=... --mode=gallery --images=x.jpg   # every corruption x severity
  python launch.py --workdir=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
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


CONFIG_ERRORS = (AttributeError, KeyError, OSError, TypeError, ValueError)


def config_flag_error(err: Exception) -> None:
    """One line naming the flags that failed, instead of ml_collections' traceback."""
    detail = f"{type(err).__name__}: {str(err).strip().splitlines()[-1].strip()}"
    bad = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    if isinstance(err, flags.Error) and not bad:
        message = f"{detail}. See python launch.py --helpshort."
    else:
        message = (f"could not apply {bad or 'the default config'}: {detail}. Field names and types are in "
                   "the config file (configs/default.py and the variants that import it).")
    print(f"brainjax: error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config_flag() -> None:
    """--config. ml_collections applies --config.<field> overrides to the default config
    while defining the flag, so a bad field fails here."""
    try:
        config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (ml_collections).",
                                        lock_config=True)
    except CONFIG_ERRORS as err:
        config_flag_error(err)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag value or a --config file that does not load
    as one line. ml_collections loads the file lazily and hands back a placeholder that
    fails on first use: use it here, inside the try."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()
        return rest
    except (flags.Error, *CONFIG_ERRORS) as err:
        config_flag_error(err)


def config_overrides(argv: list[str]) -> list[str]:
    """The config paths set on the command line: 'model.standardize' for
    --config.model.standardize=none (evaluate / predict apply only these to the run's
    config.json)."""
    return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


define_config_flag()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "gallery"], "What to do.")
flags.DEFINE_list("images", [], "Image files for --mode=predict / --mode=gallery.")
flags.DEFINE_bool("explain", False, "--mode=predict: also write a Grad-CAM overlay per image to "
                  "<workdir>/explain/<image stem>.png (for the predicted class).")
flags.DEFINE_bool("distributed", False, "Join a multi-process run: jax.distributed.initialize() with the flags "
                  "below, or JAX's cluster auto-detection (Slurm, Open MPI, TPU) where they are absent.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes in the run (implies --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 (implies --distributed).")
flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "Several processes: a process that sends no heartbeat for "
                     "this long is declared lost, and the others stop (JAX's coordination service).")
flags.DEFINE_integer("preempted_exit_code", 0, "Exit code after SIGTERM / Ctrl-C saved a checkpoint at the current "
                     "step (0 by default). Set e.g. 143 so a job controller (Slurm requeue, a Kubernetes restart "
                     "policy) can tell 'preempted, rerun me to resume' from 'finished' (0) and 'failed' (1).")
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

    explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if FLAGS.distributed or any(v is not None for v in explicit):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs use NCCL
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                                   heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
    from brainjax import parallel, run

    # a process silent for half the heartbeat timeout is declared lost, with a line naming it
    parallel.watch_for_peer_failure(stale_s=max(FLAGS.heartbeat_timeout_seconds / 2, 5.0))
    code = run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images, explain=FLAGS.explain,
                    overrides=config_overrides(sys.argv[1:]), preempted_exit_code=FLAGS.preempted_exit_code,
                    heartbeat_timeout_s=FLAGS.heartbeat_timeout_seconds)
    if code not in (0, FLAGS.preempted_exit_code) and jax.process_count() > 1:
        # The others are gone or going: jax.distributed's exit-time shutdown barrier
        # would wait for them for minutes. Leave now, with the error already printed.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
