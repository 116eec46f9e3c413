"""VGG19-BN on CIFAR-10 on a short schedule: one GPU run instead of the original's 200 + 80 epochs.

Dense: 30 epochs at batch 512, SGD with Nesterov momentum 0.9, a 2-epoch linear
warm-up to 0.2 then a cosine to 0, weight decay 5e-4, label smoothing 0.1 (the
short-schedule recipe of the fast CIFAR-10 trainers: large batch, warm-up,
one decay to zero, smoothing). Pruning: 3 rounds of 4 retraining epochs at
0.02, to about 7.2% of the weights, each layer's share near what one global
magnitude threshold keeps (the first convs and conv3 dense, conv5 at 1.5%).
Sharing: each k of the original's table fine-tuned for 2 epochs and encoded
with BatchNorm folded, float16 biases and codebooks, and deflate.
bfloat16 compute (parameters, statistics and codebooks stay float32).

  python launch.py --config configs/vgg19_fast.py --workdir runs/vgg19_fast        # a GPU
  python launch.py --config configs/vgg19_k13.py:fast                                 # the same, k = 13 first
CPU stand-in at 1/8 width (8..64 channels, a 256-256 classifier without
dropout, float32 compute) with 5 pruning rounds of 8 epochs, 4 fine-tuning
epochs per k and a codebook per output channel in conv1_1-conv2_2, the table
of RESULTS.md:
  python launch.py --config configs/vgg19_fast.py:narrow --workdir runs/vgg19_fast_narrow
Measured there (2-core CPU; from the files): dense 83.17% (67 min), then 5 x 8
pruning epochs (54 min) and the sweep (19 min quiet): pruned to 7.24% 83.23%,
k = 4 / 9 / 13 / 35: 79.69 / 82.39 / 82.72 / 83.11% at 56.1x / 49.1x / 46.0x / 38.1x (k = 4 with
configs/vgg19_k4.py:fast_narrow's codebook per channel: 81.41% at 44.3x). Full width
has not run yet (no GPU lent so far); bench/gpu_table.py runs it and prints the table.
A smoke of every stage and the sweep (minutes on a CPU):
  python launch.py --config configs/vgg19_fast.py:narrow --workdir /tmp/smoke --config.train.epochs=1 \\
      --config.train.steps_per_epoch=3 --config.prune.rounds=1 --config.prune.epochs=1 --config.share.epochs=1
"""

import ml_collections

from configs import vgg19

VARIANTS = ("", "narrow")


def get_config(variant: str = ""):
  """`variant` "narrow" is the 1/8-width CPU stand-in (`--config configs/vgg19_fast.py:narrow`)."""
  if variant not in VARIANTS:
    raise ValueError(f"configs/vgg19_fast.py:{variant} is not a variant; valid: {VARIANTS}")
  config = vgg19.get_config()
  config.model.dtype = "bfloat16"
  config.train.epochs = 30
  config.train.batch_size = 512
  config.train.eval_batch_size = 1000
  config.train.optimizer = "sgd"
  config.train.nesterov = True
  config.train.learning_rate = 0.2
  config.train.weight_decay = 5e-4
  config.train.lr_schedule = "cosine"
  config.train.warmup_epochs = 2.0
  config.train.label_smoothing = 0.1
  config.prune.rounds = 3
  config.prune.epochs = 4
  config.prune.learning_rate = 0.02
  config.prune.kept_fraction = 0.06
  # Between one share for every layer and one global magnitude threshold (which keeps 85% of conv1_1 and 0.4%
  # of conv5_2 in the dense narrow model): at 1/8 width, with the narrow schedule below, the pruned model matched
  # dense (83.23% against 83.17%) and k = 13 lost 0.45 points in a 46.0x file (RESULTS.md).
  config.prune.layer_kept_fractions = (
      ("conv1_1/kernel", 0.8), ("conv[12]_.*/kernel", 0.6), ("conv3_1/kernel", 0.5), ("conv3_.*/kernel", 0.34),
      ("conv4_1/kernel", 0.2), ("conv4_2/kernel", 0.065), ("conv4_.*/kernel", 0.035), ("conv5_.*/kernel", 0.015),
      ("fc1/kernel", 0.12), ("fc2/kernel", 0.015), ("fc3/kernel", 0.25))
  config.share.epochs = 2
  # The smallest file at the same accuracy (RESULTS.md, narrow run: 35.7x -> 46.1x at k = 13): BatchNorm folded to a
  # scale and shift, biases and codebooks at half precision, the whole file deflated.
  config.codec.fold_batch_norm = True
  config.codec.raw_dtype = "float16"
  config.codec.codebook_dtype = "float16"
  config.codec.deflate = True
  if variant == "narrow":
    config.model.width = 1 / 8
    config.model.classifier_widths = (256, 256)
    # As configs/vgg19_narrow.py measured: 0.5 dropout on 64 features stalls training.
    config.model.dropout = 0.0
    config.model.dtype = "float32"  # bfloat16 matmuls are emulated, and slow, on most CPUs.
    # Five rounds of 8 epochs (the last ones gentler than 4 rounds' were) and 4 fine-tuning epochs per k: pruned
    # 79.44% (3 x 4, 6.6% kept) -> 83.23% (7.2% kept) with the shares above (RESULTS.md).
    config.prune.rounds = 5
    config.prune.epochs = 8
    config.share.epochs = 4
    # A codebook per output channel in the four 8- and 16-channel convs, whose few dense filters one codebook of
    # k values serves badly: k = 4 / 13 76.03 / 82.56% -> 79.69 / 82.72% for 0.4 / 1.3 KB more (RESULTS.md).
    config.share.layer_granularity = (("conv[12]_.*/kernel", "channel"),)
  return config


SCHEDULES = ("", "fast", "fast_narrow")


def with_k(k: int, schedule: str) -> ml_collections.ConfigDict:
  """VGG19-BN shared at k on `schedule`: "" the original's (configs/vgg19.py), "fast" or "fast_narrow" this file's."""
  if schedule not in SCHEDULES:
    raise ValueError(f"configs/vgg19_k{k}.py:{schedule} is not a schedule; valid: {SCHEDULES}")
  config = get_config(schedule.removeprefix("fast").lstrip("_")) if schedule else vgg19.get_config()
  config.share.k = k
  return config
