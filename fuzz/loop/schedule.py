"""How a run's budget is shared between targets.

Targets run one after another, in two rounds. Round one gives each target what it needs
to reach ``min_cases`` judged cases, capped at twice its even share of the budget so one
slow target cannot take the run; round two splits what is left evenly. So a slow target
(the Triton interpreter, a kernel that compiles for seconds) still gets enough cases to
say something where the budget allows, and a fast one gets the rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prefix_referee.fuzz.loop.campaign import Campaign

# Round one may give a target up to this multiple of its even share of the budget.
ROUND_ONE_CAP = 2.0


def run_campaigns(campaigns: Sequence[Campaign], *, budget: float | None,
                  examples: int | None, min_cases: int) -> None:
    """Explore every campaign within ``budget`` seconds and/or ``examples`` judged cases."""
    if budget is None:
        for campaign in campaigns:
            campaign.explore(None, examples)
        return
    start = time.monotonic()
    share = budget / len(campaigns)
    for campaign in campaigns:
        need = min_cases if examples is None else min(min_cases, examples)
        if campaign.run.judged < need:
            campaign.explore(ROUND_ONE_CAP * share, need - campaign.run.judged)
    for index, campaign in enumerate(campaigns):
        left = budget - (time.monotonic() - start)
        if left <= 0:
            break
        remaining = None if examples is None else examples - campaign.run.judged
        if remaining is not None and remaining <= 0:
            continue
        campaign.explore(left / (len(campaigns) - index), remaining)
