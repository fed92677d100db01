"""A fixed English text for perplexity checks (`qeff bench`, `QEfficient.generation.quality`).

Original prose written for this repository (not taken from any corpus), about 250 words, so that a perplexity
measured on it means the same thing in every run and on every machine.
"""

from __future__ import annotations

EVAL_TEXT = (
    "Rivers have shaped the movement of goods and people for as long as settlements have existed. A river offers "
    "a road that needs no paving, and for most of history it was cheaper to float a load of timber or grain "
    "downstream than to haul it the same distance over land. Towns grew where a river could be crossed, where two "
    "rivers met, or where the water became deep enough for larger boats, and many of these places still hold "
    "markets on the same ground today.\n\n"
    "Trade along a river followed the seasons. In spring, melting snow raised the water and carried rafts quickly "
    "toward the coast, while the dry months of late summer exposed sandbanks that forced boatmen to unload and "
    "carry their cargo around the shallows. Merchants learned to time their journeys, and local rulers learned to "
    "collect a toll at every narrow bend. Records of these tolls are among the oldest accounts of prices, and they "
    "show how the cost of salt, cloth and iron rose with each day of travel from the sea.\n\n"
    "Canals extended the reach of rivers by linking one valley to the next. Engineers built locks to lift boats "
    "over hills and dug reservoirs to keep the channels full. When railways arrived, much of this traffic moved to "
    "the rails, yet heavy and bulky goods such as gravel, coal and fuel are still carried by barge on many large "
    "rivers. A single barge can move the load of dozens of lorries while burning far less fuel, which is why ports "
    "on inland waterways continue to invest in new quays, cranes and storage."
)

# Calibration text for quantisers that need activations (GPTQ in `qeff bench --weights gptq-int4`): also original
# prose, on other subjects than EVAL_TEXT, so that a perplexity measured on EVAL_TEXT is not measured on the data the
# weights were fitted to.
CALIBRATION_TEXT = (
    "A kitchen garden can feed a family through most of the year if it is planned with care. The first step is to "
    "watch how the sun moves across the ground, because beans, tomatoes and squash want at least six hours of light, "
    "while lettuce and spinach are content with less and bolt quickly in the heat. Beds should be narrow enough to "
    "reach the middle without stepping on the soil, which stays loose and holds water better when nobody walks on "
    "it.\n\n"
    "Compost turns kitchen scraps, fallen leaves and grass clippings into food for the next crop. A heap needs air, "
    "moisture and a balance of green and brown material; turned every few weeks, it becomes dark and crumbly within "
    "a season. Gardeners who keep notes learn which varieties did well, when the first frost arrived and which "
    "corner of the plot stayed wet after rain.\n\n"
    "The history of the bicycle is a story of small improvements. Early machines had no pedals at all: riders "
    "pushed themselves along with their feet. Cranks on the front wheel came next, then the tall wheel that made "
    "each turn of the pedals carry the rider further, at the price of frightening falls. The chain drive and two "
    "wheels of equal size made cycling safe, and air-filled tyres made it comfortable. Within a few decades the "
    "bicycle had changed how people travelled to work, courted and even voted, since it gave many of them a cheap "
    "way to reach places that had been a day's walk away.\n\n"
    "def mean(values):\n    total = 0.0\n    for value in values:\n        total += value\n"
    "    return total / len(values)\n\n"
    "Question: How many legs does a spider have? Answer: A spider has eight legs, while an insect has six.\n"
    "Question: What is the boiling point of water at sea level? Answer: One hundred degrees Celsius.\n"
)
