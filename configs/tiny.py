"""A few steps of a narrow VGG11 on CIFAR-10: for tests and smoke runs (XLA compiles VGG11 fastest)."""

from configs import vgg19


def get_config():
  config = vgg19.get_config()
  config.model.depth = 11
  config.model.width = 1 / 16
  config.model.classifier_widths = (32,)
  config.train.epochs = 2
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.steps_per_epoch = 3
  config.train.eval_batches = 2
  config.train.lr_decay_epochs = (1,)
  config.train.log_every_steps = 1
  config.prune.rounds = 2
  config.prune.epochs = 1
  config.share.epochs = 1
  config.share.sweep = ()
  return config
