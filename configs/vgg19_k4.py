"""VGG19-BN on CIFAR-10 compressed with k = 4 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k4.py --workdir runs/vgg19_k4              # the original's schedule
  python launch.py --config configs/vgg19_k4.py:fast --workdir runs/vgg19_k4_fast    # configs/vgg19_fast.py's
"""

from configs import vgg19_fast


def get_config(schedule: str = ""):
  return vgg19_fast.with_k(4, schedule)
