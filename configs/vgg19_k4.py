"""VGG19-BN on CIFAR-10 compressed with k = 4 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k4.py --workdir runs/vgg19_k4
"""

from configs import vgg19


def get_config():
  config = vgg19.get_config()
  config.share.k = 4
  return config
