"""eval: infomerge-eval (multiple-choice video QA accuracy) and the lmms-eval model plugin."""
