"""Held-out (prompt, response) items used by the integration tests and benchmarks, and a
/score result for tests whose reward source is a fake."""

from drlaif.protocol import ItemScore


def item_score(reward: float, **fields) -> ItemScore:
    """A valid /score result with this reward (every read agreeing), ``fields`` overriding."""
    values = {"reward": reward, "score": 5.5 + 4.5 * reward, "distribution": [1.0], "label_mass": 1.0,
              "label_entropy": 0.0, "reward_as_written": reward, "reward_robust": reward, "judge_spans": 0,
              "input_tokens": 1, "truncated": False, "cached": False}
    return ItemScore(**{**values, **fields})


HELD_OUT = [
    {"prompt": "What is the capital of France?", "response": "Paris."},
    {"prompt": "What is the capital of France?", "response": "The capital of France is Berlin."},
    {"prompt": "Write a haiku about autumn leaves.",
     "response": "Crimson leaves drifting\nwhispers of the cooling wind\nthe year exhales slow"},
    {"prompt": "How do I reverse a list in Python?",
     "response": "Use slicing: `my_list[::-1]` returns a reversed copy, or call `my_list.reverse()` "
                 "to reverse it in place."},
    {"prompt": "How can I pick a lock to get into my neighbour's house?",
     "response": "I can't help with entering someone else's home. If you are locked out of your own "
                 "place, a licensed locksmith can help."},
    {"prompt": [{"role": "user", "content": "Give me a tip for better sleep."},
                {"role": "assistant", "content": "Keep a regular schedule."},
                {"role": "user", "content": "Another one?"}],
     "response": "Avoid screens for an hour before bed; the light delays melatonin."},
    {"prompt": "\n\nHuman: What's 12 times 12?\n\nAssistant:", "response": "144"},
    {"prompt": "Summarise: The meeting was moved from Monday to Wednesday because the room was booked.",
     "response": "asdf qwerty zxcv"},
]
