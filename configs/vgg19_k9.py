"""VGG19-BN on CIFAR-10 compressed with k = 9 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k9.py --workdir runs/vgg19_k9         # the original's schedule
  python launch.py --config configs/vgg19_k9.py:fast --workdir runs/vgg19_k9_fast   # configs/vgg19_fast.py's
"""

from configs import vgg19, vgg19_fast


def get_config(schedule: str = ""):
  """`schedule` "" is the original's (configs/vgg19.py); "fast" and "fast_narrow" are configs/vgg19_fast.py's."""
  if schedule not in ("", "fast", "fast_narrow"):
    raise ValueError(f"configs/vgg19_k9.py:{schedule} is not a schedule; valid: '', fast, fast_narrow")
  config = vgg19_fast.get_config(schedule.removeprefix("fast").lstrip("_")) if schedule else vgg19.get_config()
  config.share.k = 9
  return config
