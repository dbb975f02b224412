"""brainjax launcher from a checkout: `python launch.py ...` is the `brainjax` command.

  python launch.py --workdir=/tmp/brainjax                       # train + evaluate (default config)
  python launch.py --workdir=... --config=configs/smoke.py --config.num_epochs=3
  python launch.py --workdir=... --config=sartaj_robust          # a bundled config, by name
  python launch.py --workdir=... --mode=evaluate                 # re-evaluate the best checkpoint
  python launch.py --workdir=... --mode=predict --images=a.jpg,b.png [--explain]   # + Grad-CAM PNGs
  python launch.py --workdir=... --mode=gallery --images=x.jpg   # every corruption x severity
  python launch.py --workdir=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

The flags and the code are in brainjax/cli.py (installed as the `brainjax` command).
"""

from brainjax import cli

if __name__ == "__main__":
    cli.run()
