"""VGG19-BN on CIFAR-10 compressed with k = 13 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k13.py --workdir runs/vgg19_k13         # the original's schedule
  python launch.py --config configs/vgg19_k13.py:fast --workdir runs/vgg19_k13_fast   # configs/vgg19_fast.py's
"""

from configs import vgg19, vgg19_fast


def get_config(schedule: str = ""):
  """`schedule` "" is the original's (configs/vgg19.py); "fast" and "fast_narrow" are configs/vgg19_fast.py's."""
  if schedule not in ("", "fast", "fast_narrow"):
    raise ValueError(f"configs/vgg19_k13.py:{schedule} is not a schedule; valid: '', fast, fast_narrow")
  config = vgg19_fast.get_config(schedule.removeprefix("fast").lstrip("_")) if schedule else vgg19.get_config()
  config.share.k = 13
  return config
