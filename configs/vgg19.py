"""VGG19-BN on CIFAR-10, the PyTorch original's model and schedule (92.22% top-1 there).

The full schedule needs a GPU:
  python launch.py --config configs/vgg19.py --workdir runs/vgg19
A CPU smoke run of its first steps:
  python launch.py --config configs/vgg19.py --workdir /tmp/vgg19 \
      --config.train.epochs=1 --config.train.steps_per_epoch=3 --config.train.eval_batches=1
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "cifar10"
  config.data.augment = True
  config.model.name = "vgg"
  config.model.depth = 19
  config.train.epochs = 200
  config.train.batch_size = 128
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.02
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.lr_schedule = "step"
  config.train.lr_decay_epochs = (60, 120, 160)
  config.train.lr_decay_factor = 0.2
  config.train.eval_batch_size = 500
  return base.lock(config)
