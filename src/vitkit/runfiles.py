"""The names of the files a run folder holds, in one place for the code that writes them (training, the
report) and the code that reads them (inference, evaluation, export). Constants only: inference imports
this without importing any training code.

run folder/
  args.yaml            resolved configuration as requested (every value, presets expanded)
  run.json             status and provenance (times, versions, host, device; epochs run, stop reason)
  metrics.csv          one row per epoch
  results.json         metrics of the best checkpoint on the reported split, epochs run, stop reason
  per_label.csv        multi-label runs: each label's AP, F1 and threshold on the reported split
  skipped_images.txt   unreadable images left out, with --skip-bad-images
  best/ last/          checkpoints: model.safetensors + config.json; last/ adds trainer.pt for --resume,
                       best/ adds agreement-bf16.json where bf16's agreement with fp32 was measured
  train_batch.png and the report's figures (SINGLE_LABEL_FIGURES or MULTI_LABEL_FIGURES), unless --no-plots
  tensorboard/ mlruns/ with --log
  .lock                held by the process that runs in the folder
"""

from __future__ import annotations

ARGS = "args.yaml"
RUN_RECORD = "run.json"
METRICS = "metrics.csv"
RESULTS = "results.json"
PER_LABEL = "per_label.csv"
SKIPPED_IMAGES = "skipped_images.txt"
LOCK = ".lock"

BEST = "best"
LAST = "last"
CHECKPOINTS = (BEST, LAST)
# in a checkpoint folder
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"  # the model's architecture, class names and preprocessing
TRAINER_STATE = "trainer.pt"  # last/ only: the training state that --resume continues from
# a checkpoint folder's record of its bf16 agreement with fp32, written at the end of training and by
# `vitkit eval --precision bf16`, and read by `--precision auto`
BF16_AGREEMENT = "agreement-bf16.json"

# Any of these in a folder: it holds a vitkit run.
RUN_MARKERS = frozenset({ARGS, RUN_RECORD, BEST, LAST})

TRAIN_BATCH_FIGURE = "train_batch.png"
CURVES_FIGURE = "curves.png"
CONFUSION_MATRIX_FIGURE = "confusion_matrix.png"
PREDICTIONS_FIGURE = "predictions.png"
PATCHES_FIGURE = "patches.png"  # patch models only
LABEL_AP_FIGURE = "label_ap.png"
PRECISION_RECALL_FIGURE = "precision_recall.png"
RELIABILITY_FIGURE = "reliability.png"  # single-label: the calibration's, drawn at the end of training
SINGLE_LABEL_FIGURES = (CURVES_FIGURE, CONFUSION_MATRIX_FIGURE, PREDICTIONS_FIGURE, PATCHES_FIGURE, RELIABILITY_FIGURE)
MULTI_LABEL_FIGURES = (CURVES_FIGURE, LABEL_AP_FIGURE, PRECISION_RECALL_FIGURE, PREDICTIONS_FIGURE)
