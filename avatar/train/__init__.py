"""Training of the temporal-GAN generator (avatar.generators.tgan) on talking-face videos.

dataset.py: videos -> cached, face-aligned clips and their audio; train/holdout split; batches.
discriminators.py: frame, sequence and sync discriminators.
losses.py: adversarial and reconstruction losses.
checkpoint.py: training checkpoints (generator + discriminators + optimisers), resume.
loop.py: `train(config, data_dir, run_dir)`, the training loop.
evaluate.py: `evaluate(config, checkpoint, data_dir)`, metrics on the held-out clips.
"""
