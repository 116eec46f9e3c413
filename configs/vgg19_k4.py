"""VGG19-BN on CIFAR-10 compressed with k = 4 shared weights per layer (a column of the original's table).

  python launch.py --config configs/vgg19_k4.py --workdir runs/vgg19_k4              # the original's schedule
  python launch.py --config configs/vgg19_k4.py:fast --workdir runs/vgg19_k4_fast    # configs/vgg19_fast.py's
  python launch.py --config configs/vgg19_k4.py:fast_narrow --workdir runs/vgg19_k4_fast_narrow

`fast_narrow`, the 1/8-width CPU stand-in, shares with four values per output
channel instead of per layer, fine-tuned for 8 epochs at 10x the paper's rate,
and makes no sweep (configs/vgg19_fast.py:narrow's run makes the other
columns): at that width four values per layer cannot stand for the few dense
filters of the first convolutions. From the five-round pruned model (83.23%),
81.41% from a 36.3 KB file (44.3x), against 79.69% with the narrow config's
codebooks (RESULTS.md).
"""

from configs import vgg19_fast


def get_config(schedule: str = ""):
  config = vgg19_fast.with_k(4, schedule)
  if schedule == "fast_narrow":
    config.share.granularity = "channel"
    config.share.layer_granularity = ()
    config.share.learning_rate = 0.005
    config.share.epochs = 8
    config.share.sweep = ()
  return config
