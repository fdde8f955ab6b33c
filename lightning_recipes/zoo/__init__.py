"""The zoo's building: pretrained weights that lightning_recipes trains itself, offline, with its own classes.

Where timm or the Hub would download weights, the zoo trains them once on real data and caches them
under ``$LIGHTNING_RECIPES_CACHE/weights`` (default ``~/.cache/lightning_recipes``), so the quickstart and
the offline recipes show real transfer learning on a machine with no network. The names, and where built
weights are found, are the core's (:mod:`lightning_recipes.registry`:
``ImageClassifier("resnet10t.digits04")`` loads built weights and never builds them); building them is this
application's, with the real classes and a Lightning Trainer, one file per family:

* :mod:`~lightning_recipes.zoo.image`: ``ImageClassifier`` + ``DigitsDataModule`` (scikit-learn's digits);
* :mod:`~lightning_recipes.zoo.text`: ``TextClassifier(head="pretrained")`` + ``TextDataModule`` (SST-2
  sentences and the MiniLM encoder of the project's shared folder);
* :mod:`~lightning_recipes.zoo.lm`: ``CausalLM`` + ``TextCorpusDataModule`` (Tiny Shakespeare, from the
  shared folder).

The shared folder is given explicitly: ``lightning-recipes zoo build NAME --source DIR`` or
``$LIGHTNING_RECIPES_SHARED``. ``lightning-recipes zoo list`` shows the zoo and what is built;
``lightning run RECIPE`` builds the zoo names a recipe uses before the run (:func:`build_missing`). A build
leaves the caller's random state as it found it, so a run gives the same result on a cold and a warm cache.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lightning_recipes.registry import ZOO, DigitsWeights, GPT2Weights, TextClassifierWeights


def build(name: str, source: str | os.PathLike | None = None, say: Callable[[str], Any] = print) -> Path:
    """Build zoo model ``name`` unless it is built, and return its path (a file or a folder).

    Args:
        name: a zoo name (``lightning-recipes zoo list``).
        source: the project's shared folder, for builds that read real data or weights from it (default:
            ``$LIGHTNING_RECIPES_SHARED``).
        say: gets the one line that announces a build (what, how long, where to); nothing when built.

    Example::

        >>> build("resnet10t.digit04")
        Traceback (most recent call last):
        KeyError: "unknown zoo name 'resnet10t.digit04'; did you mean: resnet10t.digits04?"
    """
    if name not in ZOO:
        raise KeyError(unknown_name(name))
    entry = ZOO[name]
    if entry.is_built():
        return entry.path()
    say(
        f"lightning_recipes: building zoo model {name} ({entry.arch}, trained on {entry.trained_on}) once, "
        f"{entry.build_time}; cached at {entry.path()}; your random state is left untouched"
    )
    if isinstance(entry, DigitsWeights):
        from lightning_recipes.zoo.image import build_digits

        return build_digits(entry)
    if isinstance(entry, TextClassifierWeights):
        from lightning_recipes.zoo.text import build_text_classifier

        return build_text_classifier(name, entry, source)
    if isinstance(entry, GPT2Weights):
        from lightning_recipes.zoo.lm import build_gpt2

        return build_gpt2(name, entry, source)
    raise TypeError(f"zoo entry {name!r} is a {type(entry).__name__}, which the zoo cannot build")


def build_missing(values: Iterable[Any], source: str | os.PathLike | None = None) -> list[Path]:
    """Build every zoo name among ``values`` that is not built yet (other values are skipped), each once.

    What ``lightning run`` calls with a recipe's model and data arguments before the run, and ``suggest``
    and the benchmarks with the names they pass to the modules. Returns the built paths.
    """
    names = dict.fromkeys(v for v in values if isinstance(v, str) and v in ZOO)
    return [build(name, source) for name in names]


def names_in(config: Any) -> list[str]:
    """The zoo names among a parsed recipe's ``model`` and ``data`` arguments and its callbacks' (a
    ``Distillation`` teacher): ``init_args`` values.

    Example::

        >>> names_in({"model": {"init_args": {"model_name_or_path": "resnet10t.digits04", "lr": 0.01}},
        ...           "data": {"init_args": {"root": "data/"}},
        ...           "trainer": {"callbacks": [{"init_args": {"teacher": "minilm-l6.sst2"}}]}})
        ['resnet10t.digits04', 'minilm-l6.sst2']
    """

    def get(section: Any, key: str) -> Any:
        return (section.get(key) if hasattr(section, "get") else getattr(section, key, None)) or {}

    callbacks = get(get(config, "trainer"), "callbacks")
    sections = [get(config, "model"), get(config, "data")]
    sections += [c for c in (callbacks if isinstance(callbacks, list) else []) if not isinstance(c, str)]
    values = [v for section in sections for v in dict(get(section, "init_args")).values()]
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and v in ZOO))


def unknown_name(name: str) -> str:
    """What to say about a name that is not in the zoo: the close matches, else every zoo name."""
    close = difflib.get_close_matches(name, list(ZOO), n=3, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else f"known: {', '.join(ZOO)}"
    return f"unknown zoo name {name!r}; {hint}"


USAGE = """usage:
  lightning-recipes zoo list                                 name, architecture, source task, cached, path
  lightning-recipes zoo build NAME [NAME...] [--source DIR]  train and cache these weights now

--source DIR: the project's shared folder (real data and weights) that minilm-l6.sst2 and
gpt2-mini.shakespeare are built from; default: $LIGHTNING_RECIPES_SHARED.
"""


def main(argv: list[str]) -> int:
    """``lightning-recipes zoo list|build NAME [NAME...] [--source DIR]``; returns the exit code (2: bad
    usage or name)."""
    command, names = (argv[0], list(argv[1:])) if argv else ("", [])
    source = None
    if command == "build" and "--source" in names:
        at = names.index("--source")
        source = names[at + 1] if at + 1 < len(names) else None
        names = names[:at] + names[at + 2 :]
        if source is None:
            print(f"error: --source needs a folder\n{USAGE}", file=sys.stderr)
            return 2
    if command == "list" and not names:
        rows = [("name", "arch", "trained on", "cached", "path")] + [
            (name, w.arch, w.trained_on, "yes" if w.is_built() else "no", str(w.path()))
            for name, w in ZOO.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for *cells, path in rows:
            print("  ".join([*(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)), path]))
        return 0
    if command == "build" and names:
        unknown = [name for name in names if name not in ZOO]
        for name in unknown:
            print(f"error: {unknown_name(name)} (`lightning-recipes zoo list`)", file=sys.stderr)
        if unknown:
            return 2
        for name in dict.fromkeys(names):
            if ZOO[name].is_built():
                print(f"{name}: already cached at {ZOO[name].path()}")
            else:
                print(f"{name}: built {build(name, source)}", flush=True)
        return 0
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    print(f"error: unknown zoo command {' '.join(['zoo', *argv])!r}\n{USAGE}", file=sys.stderr)
    return 2
