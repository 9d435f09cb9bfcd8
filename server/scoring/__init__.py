"""Pure scoring math: label trie, exact label probabilities, expectation, [-1,1] map, pairwise preference,
reasoned samples and principle aggregation."""

from server.scoring.aggregate import aggregate_preferences, aggregate_scores, sample_principle
from server.scoring.labels import LabelTrie, TokenReads, labels_in_context
from server.scoring.preference import OrderRead, Preference, combine_orders, mean_order, read_order
from server.scoring.reward import Scale, ScoreResult, expected_score, mean_of_samples, score_spread

__all__ = [
           "LabelTrie",
           "OrderRead",
           "Preference",
           "Scale",
           "ScoreResult",
           "TokenReads",
           "aggregate_preferences",
           "aggregate_scores",
           "combine_orders",
           "expected_score",
           "labels_in_context",
           "mean_of_samples",
           "mean_order",
           "read_order",
           "sample_principle",
           "score_spread",
]
