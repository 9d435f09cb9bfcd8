"""Evaluation and labelling on a drlaif server: AI labeler alignment, win rate, harmless rate
(Lee et al. 2023's three RLAIF metrics) and AI preference datasets (`drlaif-eval`, `drlaif-label`)."""
