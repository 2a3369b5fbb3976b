"""Synthetic game-screen crops: a stand-in for the original's figshare game data set.

Each game task reads one HUD element from a fixed screen crop (a gold amount, a timer, a squad or
coin count). :func:`render_batch` draws such crops at the task's input size: the value that names
the class, in HUD-like glyph styles (11 typefaces, weights, letter spacing, outlines and shadows),
colours and backgrounds (panels, gradients, textures, neighbouring HUD clutter), then blur, sensor
noise, JPEG artefacts and position jitter. The ``other`` class holds crops that show no valid
reading: clutter without text, other HUD words, or a value in the wrong format. What each task
shows (the label is the part in brackets):

* ``lol/goldnumber-fraction``: a gold amount ``12.[3]k``, the digit after the decimal point;
* ``lol/goldnumber-int``: a gold amount ``[12].3k``, the text before the decimal point;
* ``lol/timer-minutes``: a game clock ``[07]:42``, the minutes;
* ``apex/squad_count_v2``: squads left ``[14]`` next to a small emblem;
* ``sot/coin_count-digits_3_4-v2``: a coin count ``[9]`` next to a coin;
* ``sot/timer3``: a countdown ``[12]m``;
* any other game-family task (a user's description): the class name itself.

:func:`generate_synthetic` writes ``OUT/{train,val,test}/<class>/<n>.png`` atomically, deterministic
for a seed; :func:`contact_sheet` draws a labelled grid of samples.

Modules: :mod:`.layouts` (what each task shows, a registry: :func:`register_layout`),
:mod:`.scene` (the :class:`Scene` a layout hands to the renderer), :mod:`.glyphs` (typefaces and
cached glyphs), :mod:`.render` (drawing and degrading one crop), :mod:`.generate` (batches and the
on-disk writer), :mod:`.contact` (contact sheets).
"""

from foldedcnns.data.synth.contact import contact_sheet, folder_contact_sheet, render_contact_sheet
from foldedcnns.data.synth.generate import (
    DEFAULT_SPLIT_FRACTIONS,
    MANIFEST,
    SPLITS,
    generate_synthetic,
    render_batch,
    split_counts,
)
from foldedcnns.data.synth.layouts import (
    OTHER,
    TASK_LAYOUTS,
    Layout,
    game_spec,
    generic_layout,
    layout_for,
    register_layout,
)
from foldedcnns.data.synth.render import render_scene
from foldedcnns.data.synth.scene import Scene, SceneFn

__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "MANIFEST",
    "OTHER",
    "SPLITS",
    "TASK_LAYOUTS",
    "Layout",
    "Scene",
    "SceneFn",
    "contact_sheet",
    "folder_contact_sheet",
    "game_spec",
    "generate_synthetic",
    "generic_layout",
    "layout_for",
    "register_layout",
    "render_batch",
    "render_contact_sheet",
    "render_scene",
    "split_counts",
]
