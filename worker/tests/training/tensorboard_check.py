"""Reads a directory of TensorBoard event files with TensorBoard's own loader and prints every
scalar series as JSON: {tag: [[step, value], ...]}. Used by the training tests to prove that the
curves a version carries are what stock tooling reads."""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
accumulator.Reload()
series = {
    tag: [[event.step, event.value] for event in accumulator.Scalars(tag)]
    for tag in accumulator.Tags()["scalars"]
}
print(json.dumps(series))
