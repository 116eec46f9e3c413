"""LeNet-5 (Caffe variant, 20-50-500-10) on MNIST: the paper's dense reference (0.80% error).

  python launch.py --config configs/lenet5.py --workdir runs/lenet5
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "mnist"
  config.model.name = "lenet5"
  config.train.epochs = 15
  config.train.learning_rate = 0.05
  config.train.weight_decay = 5e-4
  config.train.lr_schedule = "cosine"
  return base.lock(config)
