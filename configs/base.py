"""Every field a dc_jax run reads, with defaults; experiments override a few of them."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameters, dropout, shuffling and augmentation.

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # mnist | fashion_mnist | cifar10.
  config.data.path = ""  # A local .npz (or IDX folder); overrides $DC_JAX_DATA_DIR and TFDS.
  config.data.tfds_dir = ""  # TFDS data_dir when loading through TFDS; "" = TFDS's default.
  config.data.augment = False  # Random crop (pad 4) + horizontal flip, for CIFAR.

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet300_100"  # vgg | lenet300_100 | lenet5.
  config.model.depth = 19  # VGG only: 11, 13, 16 or 19.
  config.model.width = 1.0  # VGG only: multiplies every conv's channels (narrow CPU runs).
  config.model.classifier_widths = (4096, 4096)  # VGG only: hidden widths; () = a 512->10 head.
  config.model.dropout = 0.5  # VGG only: dropout before each classifier layer.

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 20
  config.train.batch_size = 128
  config.train.eval_batch_size = 1000
  config.train.optimizer = "sgd"  # sgd (with momentum) | adam.
  config.train.learning_rate = 0.02
  config.train.momentum = 0.9  # sgd only.
  config.train.nesterov = False  # sgd only.
  config.train.weight_decay = 0.0  # L2 on every parameter, added to the gradient (as PyTorch's SGD).
  config.train.lr_schedule = "constant"  # constant | step | cosine.
  config.train.lr_decay_epochs = ()  # step only: epochs at which the rate is multiplied...
  config.train.lr_decay_factor = 0.2  # ...by this factor (the original's x0.2).
  config.train.steps_per_epoch = -1  # -1 = a full pass; a few steps for smoke runs.
  config.train.eval_batches = -1  # -1 = the whole test set; fewer for smoke runs.
  config.train.log_every_steps = 50  # Train metrics into metrics.jsonl every this many steps.
  config.train.checkpoint_every_epochs = 1

  config.share = ml_collections.ConfigDict()
  config.share.k = 13  # Clusters per layer in the weight-sharing stage (the original's 4/9/13/35).
  return config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that a misspelt override is an error, not a silent new field."""
  config.lock()
  return config
