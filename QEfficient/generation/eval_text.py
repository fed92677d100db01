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
