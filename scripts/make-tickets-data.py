#!/usr/bin/env python3
"""Writes the fine-tuning example's dataset, deterministically: support messages about an order,
each answered with a ticket code in a fixed format (`TICKET-4821-DAMAGED`) that no pretrained
model produces unprompted. The held-out conversations use order numbers no training
conversation has, so a model must learn the format, not memorise the answers.

    python3 scripts/make-tickets-data.py [out-dir]   (default examples/training/tickets)
"""
import json
import os
import random
import sys

# How customers put each problem, and the ticket category it files under.
PHRASINGS = {
    "DAMAGED": [
        "My order {n} arrived damaged.",
        "The box for order {n} was crushed and the item is broken.",
        "Order {n} came in pieces.",
    ],
    "LATE": [
        "Order {n} is late, where is it?",
        "I'm still waiting for order {n}, it should have arrived last week.",
        "Why hasn't order {n} been delivered yet?",
    ],
    "MISSING": [
        "I never received order {n}.",
        "The tracking says order {n} was delivered but nothing is here.",
        "Order {n} is missing an item.",
    ],
    "REFUND": [
        "I want my money back for order {n}.",
        "Please refund order {n}.",
        "Can I return order {n} for a refund?",
    ],
}
TRAIN, HELD_OUT = 480, 40


def conversation(rng, number):
    category = rng.choice(sorted(PHRASINGS))
    message = rng.choice(PHRASINGS[category]).format(n=number)
    return {"messages": [
        {"role": "user", "content": message},
        {"role": "assistant", "content": f"TICKET-{number}-{category}"},
    ]}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("examples", "training", "tickets")
    rng = random.Random(17)
    numbers = rng.sample(range(1000, 10000), TRAIN + HELD_OUT)
    held_out, train = numbers[:HELD_OUT], numbers[HELD_OUT:]
    os.makedirs(out, exist_ok=True)
    for name, split in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(os.path.join(out, name), "w") as f:
            for number in split:
                f.write(json.dumps(conversation(rng, number)) + "\n")


if __name__ == "__main__":
    main()
