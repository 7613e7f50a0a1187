"""RLRT's peer texts (spec §5): for each rollout, the text of another correct rollout of its group, which
the `with_peer_success` teacher context reads.

The draw is `castrl.teacher.successful_peers` (seeded; a row is never its own peer); what counts as
correct and how a row becomes text are the host's: TRL decodes the gathered batch's valid tokens, verl
its response tokens, `castrl diagnose` reads the decoded texts it verified. Each chosen peer is turned
into text once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from castrl.teacher.contexts import successful_peers


def peer_texts(
    correct: Sequence[bool],
    group_keys: Sequence[Hashable],
    text_of: Callable[[int], str | None],
    *,
    seed: int = 0,
    rows: slice | None = None,
) -> list[str | None]:
    """Per row (of `rows`, default all), `text_of(j)` for the peer j drawn among the other correct rows of
    its group, or None where the group has no other correct row (or `text_of` gives None)."""
    peers = successful_peers(list(correct), list(group_keys), seed=seed)
    texts: dict[int, str | None] = {}
    out: list[str | None] = []
    for j in peers if rows is None else peers[rows]:
        if j is not None and j not in texts:
            texts[j] = text_of(j)
        out.append(None if j is None else texts[j])
    return out
