"""Household sentences for embedding checks and benchmarks (written for Hearth)."""

SENTENCES = [
    "Turn off the kitchen lights.",
    "Switch the lights in the kitchen off.",
    "The fridge door has been open for five minutes.",
    "Close the refrigerator, it is beeping.",
    "Set the oven to 180 degrees for the lasagna.",
    "Preheat the oven to three hundred fifty Fahrenheit.",
    "Is the washing machine finished yet?",
    "The laundry cycle ended ten minutes ago.",
    "Lock the front door and arm the alarm.",
    "Did anyone leave the garage open?",
    "Play some quiet jazz in the living room.",
    "What's the weather forecast for tomorrow morning?",
    "Remind me to buy milk when I'm near the supermarket.",
    "The car battery is low; charge it overnight.",
    "Navigate to the nearest charging station.",
    "How much energy did the heat pump use this week?",
    "The dishwasher needs more rinse aid.",
    "Water the tomato plants at six in the evening.",
    "Turn the thermostat down two degrees at night.",
    "A robot vacuum is stuck under the sofa.",
    "Translate this recipe into Portuguese.",
    "My grandmother's soup recipe uses leeks, potatoes and cream.",
    "The quarterly report is due on Friday afternoon.",
    "Quantum computers use qubits that can be in superposition.",
    "The football match was postponed because of heavy rain.",
    "Children should wear helmets when cycling.",
    "Ice cream melts quickly on a hot summer day.",
    "The museum opens at nine and closes at five.",
    "Please read the last message from Anna aloud.",
    "Start the coffee machine at seven tomorrow.",
    "x",
    "ok",
]


_ACTIONS = [
    "Turn on",
    "Turn off",
    "Dim",
    "Check",
    "Clean",
    "Open",
    "Close",
    "Lock",
    "Unlock",
    "Pause",
    "Start",
    "Restart",
    "Schedule",
    "Cancel",
    "Inspect",
    "Reset",
]
_THINGS = [
    "the lights",
    "the heater",
    "the dishwasher",
    "the oven",
    "the garage door",
    "the blinds",
    "the washing machine",
    "the robot vacuum",
    "the coffee machine",
    "the air purifier",
    "the speaker",
    "the fridge",
    "the front door",
    "the sprinklers",
    "the car charger",
    "the thermostat",
]
_PLACES = [
    "in the kitchen",
    "in the living room",
    "upstairs",
    "in the basement",
    "in the garden",
    "in the guest room",
    "in the hallway",
    "in the garage",
]
_WHEN = [
    "now",
    "at seven tomorrow morning",
    "after dinner",
    "when I leave for work",
    "in ten minutes",
    "before the kids get home",
    "every Sunday at noon",
    "if nobody is home",
]


def benchmark_corpus(n: int = 1024) -> list[str]:
    """``n`` distinct household commands of varied length, the same on every run (no repeats to cache)."""
    import random

    rng = random.Random(20261124)
    seen: dict[str, None] = {}
    templates = [
        "{a} {t} {p} {w}.",
        "Please {al} {t} {w}.",
        "Could you {al} {t} {p}, and tell me when it is done?",
        "{a} {t}.",
    ]
    while len(seen) < n:
        a = rng.choice(_ACTIONS)
        fields = {
            "a": a,
            "al": a.lower(),
            "t": rng.choice(_THINGS),
            "p": rng.choice(_PLACES),
            "w": rng.choice(_WHEN),
        }
        seen.setdefault(rng.choice(templates).format(**fields), None)
    return list(seen)
