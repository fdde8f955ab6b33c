"""Layer groups of a transformer body, bottom (input side) to top, for gradual unfreezing and LR decay."""

from __future__ import annotations

from torch import nn


def transformer_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer blocks of ``backbone``: the name of the longest ``nn.ModuleList`` in it, and it.

    ``None`` when ``backbone`` holds no ``nn.ModuleList``.

    Example::

        >>> body = nn.Module()
        >>> body.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        >>> transformer_blocks(body)[0], transformer_blocks(nn.Linear(2, 2))
        ('blocks', None)
    """
    lists = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=lambda item: len(item[1])) if lists else None


def transformer_layer_groups(backbone: nn.Module) -> list[nn.Module]:
    """``[embeddings and everything before the blocks, block 0, ..., last block + everything after]``.

    The blocks are the longest ``nn.ModuleList`` in ``backbone`` (BERT ``encoder.layer``, DistilBERT
    ``transformer.layer``, GPT-2 ``h``, Llama ``layers``). Modules registered before it, at every level
    of the path to it (embeddings, dropout), form the first group; modules after it (a final norm, a
    pooler) join the last block. Several modules in one group come as an ``nn.ModuleList`` (a view that
    holds the same modules); a single module comes as itself. A backbone without a ``ModuleList`` is
    one group.

    Example::

        >>> body = nn.Module()
        >>> body.embed = nn.Embedding(5, 4)
        >>> body.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        >>> body.norm = nn.LayerNorm(4)
        >>> [sum(p.numel() for p in g.parameters()) for g in transformer_layer_groups(body)]
        [20, 20, 28]
    """
    found = transformer_blocks(backbone)
    if found is None:
        return [backbone]
    blocks_name, blocks = found
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    parent = backbone
    for part in blocks_name.split("."):
        children = list(parent.named_children())  # skips children set to None
        names = [name for name, _ in children]
        i = names.index(part)
        before += [m for _, m in children[:i]]
        after = [m for _, m in children[i + 1 :]] + after
        parent = children[i][1]
    groups: list[nn.Module] = [before[0] if len(before) == 1 else nn.ModuleList(before)] if before else []
    groups += list(blocks)
    if after:
        groups[-1] = nn.ModuleList([groups[-1], *after])
    return groups
