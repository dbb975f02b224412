"""The `brainjax` command (and `python launch.py`): flags -> config -> train / evaluate / predict.

  brainjax --workdir=/tmp/brainjax                              # train + evaluate (default config)
  brainjax --workdir=... --config=smoke --config.num_epochs=3   # a bundled config, by name
  brainjax --workdir=... --config=my_configs/exp.py             # or any config file
  brainjax --workdir=... --mode=evaluate                        # re-evaluate the best checkpoint
  brainjax --workdir=... --mode=predict --images=a.jpg,b.png [--explain]   # + Grad-CAM PNGs
  brainjax --workdir=... --mode=gallery --images=x.jpg          # every corruption x severity
  brainjax --workdir=... --mode=loso --config=configs/phantom_sequences.py   # leave one source out
  brainjax --workdir=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

`--config` takes a file path, or the name of a config bundled with the package
(`default`, `smoke`, `sartaj_robust`, ...: the files in `configs/`), so the installed
command works from any directory.
"""

from __future__ import annotations

import logging
import os
import sys

from brainjax import supervisor, xla_flags
from brainjax.errors import missing_extra

CONFIG_ERRORS = (AttributeError, KeyError, OSError, TypeError, ValueError)
PROG = "brainjax"


def bundled_config_dir() -> str:
    """The `configs` package's folder (the repository's, or the installed copy)."""
    import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def bundled_configs() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(bundled_config_dir()) if f.endswith(".py") and not f.startswith("_"))


def resolve_config_arg(value: str) -> str:
    """A --config value as a file path: an existing file as given, else a bundled config's
    name ('smoke', 'smoke.py', 'configs/smoke.py'); ':args' after it are kept."""
    path, sep, extra = value.partition(":")
    if os.path.isfile(path):
        return value
    name = os.path.basename(path)[:-3] if path.endswith(".py") else path
    if os.path.dirname(path) in ("", "configs") and name in bundled_configs():
        return os.path.join(bundled_config_dir(), f"{name}.py") + sep + extra
    fail(f"--config={value}: no such file, and no bundled config of that name (bundled: "
         f"{', '.join(bundled_configs())})", code=2)


def with_resolved_config(argv: list[str]) -> list[str]:
    """argv with `--config=X` / `--config X` turned into a file path; the bundled default
    when there is none."""
    out, i, seen = [argv[0]], 1, False
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config="):
            out.append("--config=" + resolve_config_arg(arg[len("--config="):]))
            seen = True
        elif arg == "--config" and i + 1 < len(argv):
            out.append("--config=" + resolve_config_arg(argv[i + 1]))
            seen, i = True, i + 1
        else:
            out.append(arg)
        i += 1
    if not seen:
        out.insert(1, "--config=" + resolve_config_arg("default"))
    return out


def fail(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def config_flag_error(err: Exception) -> None:
    """One line naming the flags that failed, instead of ml_collections' traceback."""
    from absl import flags

    detail = f"{type(err).__name__}: {str(err).strip().splitlines()[-1].strip()}"
    bad = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    if isinstance(err, flags.Error) and not bad:
        message = f"{detail}. See {PROG} --helpshort."
    else:
        message = (f"could not apply {bad or 'the default config'}: {detail}. Field names and types are in "
                   "the config file (configs/default.py and the variants that import it).")
    fail(message)


def define_flags() -> None:
    """The command's flags. --config: ml_collections applies --config.<field> overrides to
    the config while defining the flag, so a bad field fails here (one line)."""
    from absl import flags
    from ml_collections import config_flags

    try:
        config_flags.DEFINE_config_file("config", os.path.join(bundled_config_dir(), "default.py"),
                                        "Config file (ml_collections), or a bundled config's name.",
                                        lock_config=True)
    except CONFIG_ERRORS as err:
        config_flag_error(err)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
    flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "gallery", "loso"],
                      "What to do (loso: one training per held-out source of config.sources).")
    flags.DEFINE_list("images", [], "--mode=predict / --mode=gallery inputs: image files, DICOM files, DICOM series "
                      "folders, NIfTI volumes, or folders of them (searched recursively).")
    flags.DEFINE_string("predictions", None, "--mode=predict: also write one CSV row per slice here (source, slice, "
                        "every class probability, predicted class, quality, ood score, abstain reason).")
    flags.DEFINE_bool("explain", False, "--mode=predict: also write a Grad-CAM overlay per image to "
                      "<workdir>/explain/<name>.png (for the predicted class; names from the inputs' relative paths).")
    flags.DEFINE_bool("distributed", False, "Join a multi-process run: jax.distributed.initialize() with the "
                      "flags below, or JAX's cluster auto-detection (Slurm, Open MPI, TPU) where they are absent.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
    flags.DEFINE_integer("num_processes", None, "Number of processes in the run (implies --distributed).")
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 (implies --distributed).")
    flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "Several processes: a process that sends no heartbeat "
                         "for this long is declared lost, and the others stop (JAX's coordination service).")
    flags.DEFINE_integer("preempted_exit_code", 0, "Exit code after SIGTERM / Ctrl-C saved a checkpoint at the "
                         "current step (0 by default). Set e.g. 143 so a job controller (Slurm requeue, a "
                         "Kubernetes restart policy) can tell 'preempted, rerun me to resume' from 'finished' (0) "
                         "and 'failed' (1).")
    flags.mark_flag_as_required("workdir")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag value or a --config file that does not load
    as one line. ml_collections loads the file lazily and hands back a placeholder that
    fails on first use: use it here, inside the try."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()
        return rest
    except (flags.Error, *CONFIG_ERRORS) as err:
        config_flag_error(err)


def config_overrides(argv: list[str]) -> list[str]:
    """The config paths set on the command line: 'model.standardize' for
    --config.model.standardize=none (evaluate / predict apply only these to the run's
    config.json)."""
    return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def main(argv: list[str]) -> None:
    del argv
    from absl import flags
    from absl import logging as absl_logging

    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/tfds chatter
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("brainjax").setLevel(logging.INFO)
    import jax  # TensorFlow is imported only where data is read (brainjax.data.pipeline keeps it off the GPUs)

    from brainjax import parallel

    explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if FLAGS.distributed or any(v is not None for v in explicit):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs use NCCL
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                                   heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
    try:
        from brainjax import run as runner
    except ImportError as err:
        advice = missing_extra(err)
        if advice is None:
            raise
        fail(f"--mode={FLAGS.mode} needs it: {advice}", code=1)

    # a process silent for half the heartbeat timeout is declared lost, with a line naming it
    parallel.watch_for_peer_failure(stale_s=max(FLAGS.heartbeat_timeout_seconds / 2, 5.0))
    code = runner.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images, explain=FLAGS.explain,
                       overrides=config_overrides(sys.argv[1:]), preempted_exit_code=FLAGS.preempted_exit_code,
                       heartbeat_timeout_s=FLAGS.heartbeat_timeout_seconds, predictions=FLAGS.predictions)
    if code not in (0, FLAGS.preempted_exit_code) and jax.process_count() > 1:
        # The others are gone or going: jax.distributed's exit-time shutdown barrier
        # would wait for them for minutes. Leave now, with the error already printed.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> None:
    """Entry point of the `brainjax` console command. Joining a multi-process run, the
    work runs in a supervised child (brainjax/supervisor.py), so that even a process JAX
    aborts ends with one line naming the cause."""
    if supervisor.joins_a_cluster(sys.argv):
        sys.exit(supervisor.supervise(sys.argv))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TF's C++ INFO lines
    xla_flags.apply_cpu_defaults()  # before JAX starts a backend
    sys.argv = with_resolved_config(sys.argv)
    define_flags()
    from absl import app

    app.run(main, flags_parser=parse_flags)
