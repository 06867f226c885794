"""PRoLoRA."""
