#!/usr/bin/env bash
# Turn a downloaded LibriSpeech (the folder holding train-clean-100/, dev-clean/, test-clean/) into
# manifests under data/librispeech/, validate every record and fit the BPE, without training:
#   scripts/prepare_librispeech.sh /data/LibriSpeech
# Then train on it with:  slmlab-train data=librispeech data.source=/data/LibriSpeech
set -euo pipefail
source_dir="${1:?usage: $0 /path/to/LibriSpeech}"
shift
exec "$(dirname "$0")/../.venv/bin/slmlab-prepare" data=librispeech data.source="$source_dir" "$@"
