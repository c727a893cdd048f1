"""harness: an experiment-tracking competition harness for deepfake detection.

Importing the package imports nothing heavy (no torch, timm, mlflow, optuna or librosa), so the CLI
starts fast; each command imports what it needs inside its body.
"""
__version__ = "0.1.0"
