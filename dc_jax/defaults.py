"""Every field a dc_jax run reads, with its default; experiments (configs/) override a few of them.

The library keeps the defaults, not configs/, so that it can tell what a field
not given means: a workdir recorded before a field existed was made with its
default (provenance.py), and validation knows which values are the user's choice.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameters, dropout, shuffling and augmentation.

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # mnist | fashion_mnist | cifar10.
  config.data.path = ""  # A local .npz (or IDX folder); overrides $DC_JAX_DATA_DIR and TFDS.
  config.data.tfds_dir = ""  # TFDS data_dir when loading through TFDS; "" = TFDS's default.
  config.data.augment = False  # Random shifts (crop of the padded image) and flips of training images.
  config.data.crop_padding = 4  # augment: shifts of up to this many pixels (CIFAR: 4).
  config.data.flip = True  # augment: random horizontal flips (CIFAR: yes; digits: no).
  config.data.pipeline = "auto"  # Where training batches are drawn: device (in jit) | host (numpy) | auto = device if it fits.

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet300_100"  # vgg | lenet300_100 | lenet5.
  config.model.depth = 19  # VGG only: 11, 13, 16 or 19.
  config.model.width = 1.0  # VGG only: multiplies every conv's channels (narrow CPU runs).
  config.model.channels = ()  # VGG only: every conv's output channels, in order (a shrunk VGG); () = from depth and width.
  config.model.classifier_widths = (4096, 4096)  # VGG only: hidden widths; () = a 512->10 head.
  config.model.dropout = 0.5  # VGG only: dropout before each classifier layer.
  config.model.conv_impl = "auto"  # VGG only: auto | xla | patches (im2col + matmul); auto = patches where faster on CPU.
  config.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (GPU/TPU); params and codebooks stay float32.

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
  config.train.warmup_epochs = 0.0  # cosine only: a linear warm-up from 0 over this many epochs, then the cosine.
  config.train.label_smoothing = 0.0  # Training loss against (1 - s) one-hot + s / classes; test loss is plain.
  config.train.bn_scale_l1 = 0.0  # Dense training: L1 on BatchNorm scales (network slimming), added to their gradients.
  config.train.bn_scale_l1_flops = False  # ...each channel's L1 weighted by the FLOPs it costs (MorphNet), mean 1.
  config.train.steps_per_epoch = -1  # -1 = a full pass; a few steps for smoke runs.
  config.train.steps_per_dispatch = 1  # device pipeline: steps per jitted call (lax.scan); > 1 on GPU/TPU only.
  config.train.eval_batches = -1  # -1 = the whole test set; fewer for smoke runs.
  config.train.log_every_steps = 50  # Train metrics into metrics.jsonl every this many steps.
  config.train.checkpoint_every_epochs = 1
  config.train.param_sharding = "replicated"  # replicated | sharded: large arrays split over devices (FSDP-like).

  config.stages = ("baseline", "pruned", "shared", "encoded")  # Stages to run, in order (slimmed: by channels.*).
  config.start_from = ""  # A workdir (or checkpoint folder) of a trained dense model: restored, not trained.
  config.redo_changed = False  # A rerun whose settings differ from a workdir's stages (config.json): stop, or True = delete and redo those stages.

  config.sensitivity = ml_collections.ConfigDict()
  config.sensitivity.enabled = False  # After the baseline, prune each layer alone and evaluate (Han 2015, Fig. 5).
  config.sensitivity.fractions = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)  # Kept fractions to try.
  config.sensitivity.tolerated_drop = 0.005  # Per layer, the smallest fraction within this accuracy drop...
  config.sensitivity.apply = False  # ...becomes the layer's kept fraction for pruning (criterion layer).
  config.sensitivity.eval_batches = -1  # Test batches per evaluation; -1 = all.

  config.channels = ml_collections.ConfigDict()
  config.channels.flops_fraction = 1.0  # < 1: stage slimmed cuts a VGG's smallest-|gamma| channels to this FLOPs share.
  config.channels.scope = "global"  # global (one |gamma| threshold, network slimming) | layer (same share each).
  config.channels.multiple = 1  # Each conv keeps a multiple of this many channels, or all of them (8: faster convs on CPU).
  config.channels.epochs = 2  # Fine-tuning epochs of the shrunk VGG; the rest of the optimizer comes from train.*.
  config.channels.learning_rate = 0.005  # Fine-tuning rate, as a pruning round's retraining.
  config.channels.lr_schedule = "cosine"

  config.prune = ml_collections.ConfigDict()
  config.prune.patterns = (r".*kernel",)  # Regexes (fullmatch) over paths like "ip1/kernel": what is pruned.
  config.prune.criterion = "layer"  # layer (top fraction per layer) | global | threshold (Han's q * std).
  config.prune.structure = "unstructured"  # unstructured | n:m (n of every m along a kernel's input axis) | block.
  config.prune.n = 2  # n:m only: kept of every m consecutive weights along the input axis (2:4: sparse tensor cores)...
  config.prune.m = 4  # ...and m: n:m keeps n/m of each kernel, so kept_fraction and schedule do not apply.
  config.prune.block_shape = (4, 4)  # block only: a block's extent over the kernel's (in, out) axes; fractions count blocks.
  config.prune.block_score = "mean_abs"  # block only: mean_abs | l2 of a block's kept weights, what blocks are ranked by.
  config.prune.schedule = "polynomial"  # polynomial | geometric (layer, global) | han (threshold: same q each round).
  config.prune.rounds = 5  # Prune-then-retrain rounds.
  config.prune.kept_fraction = 0.1  # Kept after the last round (layer, global).
  config.prune.layer_kept_fractions = ()  # ((regex, fraction), ...): per-layer overrides, first match wins.
  config.prune.quality = 1.0  # threshold only: keep |w| >= quality * std of the layer's surviving weights.
  config.prune.layer_qualities = ()  # ((regex, quality), ...): per-layer overrides.
  config.prune.epochs = 3  # Retraining epochs per round; the rest of the optimizer comes from train.*.
  config.prune.learning_rate = 0.005  # Retraining rate, about 1/10 of training's (Han et al.).
  config.prune.lr_schedule = "cosine"  # Restarts each round.

  config.distill = ml_collections.ConfigDict()
  config.distill.weight = 0.0  # Retraining and fine-tuning also learn the dense model's soft targets: this share of the loss.
  config.distill.temperature = 4.0  # Softens both models' logits (Hinton et al. 2015); the soft loss is scaled by its square.

  config.share = ml_collections.ConfigDict()
  config.share.k = 13  # Clusters in every shared layer (the original's 4/9/13/35).
  config.share.bits = 0  # > 0: 2**bits clusters in every shared layer instead of k (LeNet-300-100: 6).
  config.share.layer_bits = ()  # ((regex, bits), ...): per-layer, first match wins (the paper: conv 8, fc 5).
  config.share.patterns = (r".*kernel",)  # Regexes (fullmatch) over parameter paths: what is shared.
  config.share.init = "linear"  # linear (the paper's best) | density | random | kmeans++.
  config.share.granularity = "tensor"  # One codebook per: tensor (the paper's) | channel (output channel) | group.
  config.share.layer_granularity = ()  # ((regex, granularity), ...): per-layer, first match wins, before granularity.
  config.share.group_size = 8  # granularity=group: consecutive output channels per codebook; the last may be fewer.
  config.share.vector_size = 1  # > 1: one index per d consecutive weights of a neuron, [k, d] codebook (init kmeans++ | random).
  config.share.max_iterations = 1000  # Lloyd iterations at most per layer.
  config.share.reduction = "sum"  # A centroid's gradient: sum (the paper's Eq. 3) | mean of its weights'.
  config.share.method = "paper"  # Fine-tuning: paper (codebooks, fixed clusters) | dkm (weights through soft k-means).
  config.share.dkm_iterations = 5  # dkm only: soft k-means iterations per step, differentiated through.
  config.share.dkm_temperature = 1.0  # dkm only: softness, in units of the layer's k-means mean squared error.
  config.share.train_unshared = True  # Fine-tune biases and BatchNorm too, not only the codebooks.
  config.share.epochs = 2  # Fine-tuning epochs; the rest of the optimizer comes from train.* (no weight decay).
  config.share.learning_rate = 0.0005  # With summed gradients a centroid moves for all its weights at once.
  config.share.lr_schedule = "cosine"
  config.share.sweep = ()  # With stage encoded: also share and encode at each of these k (the original's 4/9/13/35).

  config.codec = ml_collections.ConfigDict()
  config.codec.index_bits = 0  # Bits per relative index; 0 = per layer, the width (2..8) of the smallest file (the paper: 5).
  config.codec.layer_index_bits = ()  # ((regex, bits), ...): per-layer, first match wins; bits 0 = auto.
  config.codec.deflate = False  # True: the file DEFLATE-compressed whole (format version 4): 3-17% smaller.
  config.codec.codebook_dtype = "float32"  # float16: each shared layer's centroids at half precision (where finite).
  config.codec.fold_batch_norm = False  # True: BatchNorm folded to 2 floats a channel (inference only; use deflate).
  config.codec.raw_dtype = "float32"  # float16: biases and BatchNorm stored at half precision (where finite).

  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False  # Multi-host: call jax.distributed.initialize before anything else.
  config.distributed.coordinator_address = ""  # host:port of process 0; ""/0/-1 below = auto-detect (TPU, SLURM).
  config.distributed.num_processes = 0  # Processes in the run; 0 = auto-detect.
  config.distributed.process_id = -1  # This process's index, 0..num_processes-1; -1 = auto-detect.
  config.distributed.local_device_ids = ()  # This process's devices (e.g. GPUs); () = all it sees.
  return config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that a misspelt override is an error, not a silent new field."""
  config.lock()
  return config
