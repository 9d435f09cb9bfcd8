"""Pure scoring math: label trie, exact label probabilities, expectation, reward map."""

from server.scoring.labels import LabelTrie, TokenReads, labels_in_context
from server.scoring.reward import Scale, ScoreResult, expected_score

__all__ = ["LabelTrie", "Scale", "ScoreResult", "TokenReads", "expected_score", "labels_in_context"]
