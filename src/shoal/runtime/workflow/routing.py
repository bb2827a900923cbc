"""Smooth weighted round-robin: spread a stage's requests over its workers in planned shares.

The planner gives every worker of a task a load share in requests/s. Random choice would match
the shares only on average (a 2000-request run drifts by a few percent) and sends bursts to one
worker; nginx's smooth weighted round-robin is deterministic, interleaves the workers as evenly
as the weights allow, and after any number of picks n each worker has received within about
one request of n x its share. Weights may be any positive floats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shoal.core.errors import InvalidInputError

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """Pick a name per call; over time each name is picked in proportion to its weight."""

    def __init__(self, weights: Mapping[str, float]):
        positive = {name: float(weight) for name, weight in weights.items() if weight > 0}
        if not positive:
            raise InvalidInputError(f"round-robin weights {dict(weights)} have no positive entry: give every route a share > 0.")
        self.weights = positive
        self._total = sum(positive.values())
        self._current = dict.fromkeys(positive, 0.0)

    def pick(self, usable: Callable[[str], bool] | None = None) -> str | None:
        """The next name; with `usable`, the next among the names it accepts (the others sit this
        pick out, so the usable ones share in their own proportions), or None when it accepts none."""
        names = list(self.weights) if usable is None else [name for name in self.weights if usable(name)]
        if not names:
            return None
        for name in names:
            self._current[name] += self.weights[name]
        chosen = max(names, key=self._current.__getitem__)
        self._current[chosen] -= self._total if usable is None else sum(self.weights[name] for name in names)
        return chosen

    def share(self, name: str) -> float:
        """The fraction of picks `name` is planned to receive."""
        return self.weights.get(name, 0.0) / self._total
