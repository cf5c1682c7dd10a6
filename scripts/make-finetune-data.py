#!/usr/bin/env python3
"""Writes the fine-tuning examples' datasets, deterministically. Each task is an answer format no
pretrained model produces unprompted, and its held-out conversations use items no training
conversation has, so a model must learn the format, not memorise the answers:

- `tickets`: support messages about an order, answered with a ticket code
  (`My order 4821 arrived damaged.` -> `TICKET-4821-DAMAGED`); held out: unseen order numbers.
- `sku`: questions about a product, answered with its stock-keeping code
  (`What is the SKU of the red lamp in size 3?` -> `SKU-LAMP-RED-3`); held out: unseen
  (product, colour, size) combinations.

    python3 scripts/make-finetune-data.py TASK [out-dir]   (default examples/training/TASK)
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


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def ticket(rng, number):
    category = rng.choice(sorted(PHRASINGS))
    message = rng.choice(PHRASINGS[category]).format(n=number)
    return chat(message, f"TICKET-{number}-{category}")


def tickets(rng):
    numbers = rng.sample(range(1000, 10000), TRAIN + HELD_OUT)
    held_out, train = numbers[:HELD_OUT], numbers[HELD_OUT:]
    return [ticket(rng, n) for n in train], [ticket(rng, n) for n in held_out]


PRODUCTS = ["lamp", "chair", "desk", "shelf", "mug", "kettle", "rug", "clock", "vase", "stool", "fan", "mirror"]
COLOURS = ["red", "blue", "green", "black", "white", "grey", "yellow", "brown"]
QUESTIONS = [
    "What is the SKU of the {colour} {product} in size {size}?",
    "I need the stock code for a size {size} {product} in {colour}.",
    "Which SKU is the {product}, {colour}, size {size}?",
]


def skus(rng):
    items = [(p, c, s) for p in PRODUCTS for c in COLOURS for s in range(1, 10)]
    rng.shuffle(items)
    held_out, train = items[:HELD_OUT], items[HELD_OUT:HELD_OUT + TRAIN]

    def conversation(item):
        product, colour, size = item
        question = rng.choice(QUESTIONS).format(product=product, colour=colour, size=size)
        return chat(question, f"SKU-{product.upper()}-{colour[:3].upper()}-{size}")

    return [conversation(item) for item in train], [conversation(item) for item in held_out]


# Each task's data and the seed it is drawn from.
TASKS = {"tickets": (tickets, 17), "sku": (skus, 23)}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(f"usage: make-finetune-data.py {{{'|'.join(TASKS)}}} [out-dir]")
    task = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join("examples", "training", task)
    generate, seed = TASKS[task]
    train, held_out = generate(random.Random(seed))
    os.makedirs(out, exist_ok=True)
    for name, split in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(os.path.join(out, name), "w") as f:
            for conversation in split:
                f.write(json.dumps(conversation) + "\n")


if __name__ == "__main__":
    main()
