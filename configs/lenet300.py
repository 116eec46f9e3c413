"""LeNet-300-100 on MNIST: the paper's dense reference (1.64% error).

  python launch.py --config configs/lenet300.py --workdir runs/lenet300
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "mnist"
  config.model.name = "lenet300_100"
  config.train.epochs = 30
  config.train.learning_rate = 0.05
  config.train.weight_decay = 1e-4
  config.train.lr_schedule = "cosine"
  return base.lock(config)
