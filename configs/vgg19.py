"""VGG19-BN on CIFAR-10, the PyTorch original's model and schedule (92.22% top-1 there).

The full schedule needs a GPU:
  python launch.py --config configs/vgg19.py --workdir runs/vgg19
Pruning: 8 rounds of 10 retraining epochs, to 7.5% of the weights (the original:
24 rounds of 25 epochs, Han's |w| >= std rule; `--config.prune.criterion=threshold
--config.prune.schedule=han --config.prune.rounds=24 --config.prune.epochs=25`).
Then sharing at k = 13 and the sweep over k = 4, 9, 13, 35, each fine-tuned
for 2 epochs and encoded. A CPU smoke run of its first steps, every stage and
the sweep (28 minutes on a busy 2-core CPU; files 56.4x to 40.0x smaller):
  python launch.py --config configs/vgg19.py --workdir /tmp/vgg19 \
      --config.train.epochs=1 --config.train.steps_per_epoch=3 --config.train.eval_batches=1 \
      --config.prune.rounds=2 --config.prune.epochs=1 --config.share.epochs=1
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
  # Pruning to the paper's VGG-16 sparsity (7.5% kept), sparing the 1.7K-weight first conv.
  config.prune.criterion = "layer"
  config.prune.schedule = "polynomial"
  config.prune.rounds = 8
  config.prune.kept_fraction = 0.075
  config.prune.layer_kept_fractions = (("conv1_1/kernel", 0.6),)
  config.prune.epochs = 10
  config.prune.learning_rate = 0.002
  # The original's table: the pruned model shared at each k, fine-tuned and encoded.
  config.share.sweep = (4, 9, 13, 35)
  return base.lock(config)
