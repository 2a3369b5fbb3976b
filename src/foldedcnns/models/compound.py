"""EfficientNet-style compound-scaled game CNN: the baseline FoldedCNNs are compared with.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; used here, as in the
FoldedCNNs paper, to *shrink* the game CNN by phi - 1 steps (phi = 2 in the paper): widths are
divided by ``width_mult``, the input resolution by ``res_mult`` and the number of convolutions by a
depth factor.

Kept quirk of the original (documented in docs/models.md): the depth factor is computed from
``width_mult`` (so 1/1.1 per step), not from ``depth_mult``. Keeping it reproduces the published
FLOP counts; pass ``depth_from="depth"`` for the textbook rule.
"""

from __future__ import annotations

from foldedcnns.errors import ConfigError
from foldedcnns.models.game import GameCNN, game_layout
from foldedcnns.models.spec import TaskSpec, scaled

DEPTH_MULT = 1.2
WIDTH_MULT = 1.1
RES_MULT = 1.15
DEFAULT_PHI = 2


def compound_input_hw(spec: TaskSpec, phi: int = DEFAULT_PHI, res_mult: float = RES_MULT) -> tuple[int, int]:
    """Input (H, W) after shrinking the resolution phi - 1 steps: ``int(H / res_mult**(phi-1))``."""
    div = res_mult ** (phi - 1)
    return int(spec.height / div), int(spec.width / div)


def compound_game_cnn(spec: TaskSpec, *, phi: int = DEFAULT_PHI, width_mult: float = WIDTH_MULT,
                      depth_mult: float = DEPTH_MULT, res_mult: float = RES_MULT,
                      depth_from: str = "width") -> GameCNN:
    """Build the compound-scaled game CNN (no folding: C input channels, K outputs)."""
    where = spec.source or spec.name
    if spec.family != "game":
        raise ConfigError(f"compound scaling applies to game tasks only, not {spec.name} ({spec.family})")
    if isinstance(phi, bool) or not isinstance(phi, int) or phi < 1:
        raise ConfigError(f"phi must be an integer >= 1, got {phi!r}")
    if depth_from not in ("width", "depth"):
        raise ConfigError(f"depth_from must be 'width' or 'depth', got {depth_from!r}")
    per_unit, units, c1, ci, cn = game_layout(spec.architecture, where)
    width = (1.0 / width_mult) ** (phi - 1)
    depth = (1.0 / (width_mult if depth_from == "width" else depth_mult)) ** (phi - 1)
    budget = int((1 + per_unit * units + 1) * depth)

    plan: list[tuple[str, int]] = []
    if budget > 0:
        plan += [("conv", scaled(c1, width)), ("pool", 2)]
        budget -= 1
    for _ in range(units):
        added = min(per_unit, budget)
        plan += [("conv", scaled(ci, width))] * added
        budget -= added
        if added:
            plan.append(("pool", 1))
    if budget > 0:
        plan += [("conv", scaled(cn, width)), ("pool", 2)]
    return GameCNN(spec.in_channels, plan, spec.num_classes, compound_input_hw(spec, phi, res_mult), where)
