"""Shared defaults of every experiment; dataset configs import this and change what differs.

Field names say what they do; README.md maps the original command-line flags to them.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The MALLS defaults, as the paper defines the method: labels bought from the medial
    distribution N ~ P w^0.5 (the budget spread over predicted classes on max-entropy
    scores), w = Q/P estimated by RLLS on a held-out labeled sample and re-estimated after
    every round, and every label importance-weighted in training.

    Posterior correction (p(y|x) w(y), renormalised) is for a network trained *without*
    importance weights, so it is off here. alsa_jax's alternative to importance-weighted
    training, the correction made on posteriors calibrated on the held-out sample, is
    ``label_shift.importance_weighting=False`` with both ``posterior_correction_*`` on (and
    ``label_shift.estimator=mlls``); README.md ("Does MALLS save labels?") says where
    each one wins.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "digits"
    config.dataset.path = ""  # npz: the arrays file
    config.dataset.num_classes = 0  # npz: 0 = max label + 1
    config.dataset.test_fraction = 1 / 3  # digits: share of each class in the test part
    config.dataset.split_seed = 0  # digits: the fixed train/test split
    # TFDS datasets (mnist, cifar10, cifar100, nabirds): TFDS's data_dir ("" = $TFDS_DATA_DIR
    # or ~/tensorflow_datasets) and where raw downloads are read ("" = <data_dir>/downloads/manual).
    config.dataset.data_dir = ""
    config.dataset.manual_dir = ""
    config.dataset.download = False  # let TFDS download what is absent (needs internet)
    config.dataset.label_granularity = "grand"  # nabirds: child (22) | grand (228) | leaf
    config.dataset.image_size = 200  # nabirds: stored side after the bounding-box crop

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnn"  # mlp | cnn | resnet18 | resnet34
    config.model.conv_impl = "shifted_matmul"  # training: xla | shifted_matmul (same math)
    config.model.inference_conv_impl = "xla"  # prediction: XLA's conv is faster forward on CPU
    config.model.train_chunk = -1  # cnn: train convs in chunks of N images; -1 auto, 0 whole

    # Batch augmentation on the device (alsa_jax.augment.PIPELINES): none | cifar | nabirds.
    config.augment = ml_collections.ConfigDict()
    config.augment.name = "none"
    config.augment.crop_size = 150  # nabirds: random crop for training, centre crop at test
    config.augment.padding = 4  # cifar: zero padding before the random crop
    config.augment.rotation_degrees = 15.0  # cifar: rotation uniform in +-degrees
    config.augment.horizontal_flip = True  # cifar: mirror with probability 1/2

    config.shift = ml_collections.ConfigDict()
    config.shift.strategy = "dirichlet_target"  # any name in alsa_jax.shift.STRATEGIES
    config.shift.alpha = 0.6  # Dirichlet concentration
    # dirichlet_general: the (warm, pool, test) alphas.
    config.shift.alpha_triple = config_dict.placeholder(tuple)
    config.shift.dataset_cap = 3000  # warm start + pool examples after resampling
    config.shift.warmstart_ratio = 1.0  # r: warm start gets cap * r / (1 + r)
    config.shift.test_size = 0  # evaluation examples; 0 = as many as the pool
    # Labeled source rows held out for the confusion matrix; 0 = the original (training rows).
    config.shift.holdout_fraction = 0.2
    # Test rows kept as the unlabeled target sample; 0 = the original (the test split).
    config.shift.target_fraction = 0.5
    config.shift.tweak_label = 0  # tweak: the class that gets proportion rho
    config.shift.tweak_rho = 0.5
    config.shift.initial_prop = 0.0  # fraction of the pool labeled up front

    config.label_shift = ml_collections.ConfigDict()
    config.label_shift.estimator = "rlls"  # none | bbse | rlls | mlls | oracle
    config.label_shift.rlls_reg = 1e-3
    # Calibration fitted on the held-out labeled sample (bcts | ts | none): MLLS's, and the
    # corrections' when label_shift.calibrated_correction.
    config.label_shift.calibration = "bcts"
    config.label_shift.weight_lambda = 1.0  # w <- (1 - lambda) + lambda * w
    config.label_shift.iterative = True  # re-estimate the weights after every round
    config.label_shift.importance_weighting = True  # train with the weights w(y)
    # Weight every labeled example, not only the warm start (the original's reweight).
    config.label_shift.reweight_all_labeled = True
    config.label_shift.posterior_correction_scoring = False  # score on p(y|x) w(y), renormalised
    config.label_shift.posterior_correction_eval = False  # evaluate on corrected posteriors
    # Corrections calibrate the probabilities on the held-out sample first (label_shift.
    # calibration) and correct by Q / P_holdout; False: the original's uncalibrated correction.
    config.label_shift.calibrated_correction = True
    # The original's quirk: the confusion matrix on posterior-corrected predictions.
    config.label_shift.correct_confusion_predictions = False
    config.label_shift.soft_confusion = False  # confusion from probabilities instead of argmax

    config.query = ml_collections.ConfigDict()
    # random | maxent | margin | least_confidence | bald | bald_vote | qbc | iwal | badge
    config.query.strategy = "maxent"
    # How the budget is spread over predicted classes: none (top-k) | medial (N ~ P w^lambda)
    # | the original's guess (equal shares) | subguess (~ sqrt(w)) | overguess (~ w).
    config.query.diversify = "medial"
    # diversify=medial: 0 buys like the source pool, 1 like the target, unset = 0.5 (sqrt(P Q)).
    config.query.medial_lambda = config_dict.placeholder(float)
    config.query.num_batches = 20  # rounds
    config.query.sample_prop = 0.2  # fraction of the pool bought over all rounds
    config.query.mc_samples = 20  # MC-dropout passes for bald / bald_vote / iwal
    config.query.committee_size = 8  # qbc: independently initialised networks
    config.query.iwal_p_min = 1e-3
    config.query.iwal_importance_weights = True  # apply IWAL's 1/p weights (False = original)

    config.train = ml_collections.ConfigDict()
    config.train.optimizer = "adam"  # adam | sgd
    config.train.schedule = "exponential"  # exponential (per epoch) | step (at milestones)
    config.train.learning_rate = 1e-2
    config.train.finetune_learning_rate = 1e-2
    config.train.gamma = 0.97
    config.train.milestones = (20, 40, 60)
    config.train.finetune_milestones = (3, 6, 10)
    config.train.warm_epochs = 0
    config.train.momentum = 0.9
    config.train.weight_decay = 5e-4
    config.train.batch_size = 128
    config.train.eval_batch_size = 512
    config.train.initial_epochs = 60
    config.train.partial_epochs = 10

    config.h0_cache_dir = ""  # "" = <workdir>/../h0_cache, shared by runs beside each other
    # JAX's persistent compilation cache: "" = <workdir>/../compilation_cache, shared by runs
    # beside each other (a run after the first loads its compiled programs); "none" = off.
    config.compilation_cache_dir = ""
    config.checkpoint_keep = 2  # round checkpoints kept in the workdir
    # Seeds seed .. seed + N - 1 of this config trained and evaluated together (vmapped), seed
    # k in <workdir>/seed<k>, each folder as a run of that seed alone leaves it.
    config.num_parallel_seeds = 1

    # One run over several hosts (jax.distributed): every host starts the same command (one
    # srun task each) on a shared workdir. Off: the run never looks for other processes.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    # host:port of process 0; "" = from the cluster (Slurm) or $JAX_COORDINATOR_ADDRESS
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 0  # 0 = from the cluster (Slurm: SLURM_NTASKS)
    config.distributed.process_id = -1  # -1 = from the cluster (Slurm: SLURM_PROCID)
    config.distributed.initialization_timeout = 300  # seconds each process waits for the rest
    return config
