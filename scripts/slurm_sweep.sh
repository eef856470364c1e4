#!/usr/bin/env bash
# Example: a learning-rate sweep of the text baseline, each job on 2 nodes x 4 GPUs (DDP, bf16).
# Hydra submits one SLURM job per sweep point through hydra-submitit-launcher; Lightning picks up
# the SLURM environment (one task per GPU). Edit partition/account/time for your cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/slmlab-train -m hydra/launcher=slurm \
  hydra.launcher.partition=gpu hydra.launcher.account=my_account hydra.launcher.timeout_min=720 \
  strategy=ddp precision=bf16-mixed trainer.devices=4 trainer.num_nodes=2 \
  data=librispeech data.source=/data/LibriSpeech \
  model.task.optimizer.lr=3e-4,1e-3 "$@"
