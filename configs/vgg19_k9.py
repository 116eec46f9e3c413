"""VGG19-BN on CIFAR-10 compressed with k = 9 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k9.py --workdir runs/vgg19_k9              # the original's schedule
  python launch.py --config configs/vgg19_k9.py:fast --workdir runs/vgg19_k9_fast    # configs/vgg19_fast.py's
"""

from configs import vgg19_fast


def get_config(schedule: str = ""):
  return vgg19_fast.with_k(9, schedule)
