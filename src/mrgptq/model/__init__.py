"""Walking Hugging Face models: loading, architecture tables, calibration capture, the block pipeline."""
