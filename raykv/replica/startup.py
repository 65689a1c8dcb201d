"""What a replica may be when it starts: founder, reopened, fresh joiner, or amnesiac.

Ray restarts an actor with its creation arguments, and a host can come back
without its disk. A replica that existed before -- it may have voted, or
acknowledged entries a leader counted as committed -- and finds no data must not
come back as an empty voter: it could vote twice in one term, or complete a
quorum for a leader lacking committed entries. Worse, accepting appends from a
stale leader it had already rejected would let that leader "commit" an entry the
real leader overwrites. So such a replica becomes **amnesiac**: it takes no part in
Raft at all (no votes, no acknowledgements, no requests), says so in its status,
and waits to be removed from the group; repair adds a fresh replica with a new id
in its place (ids are never reused).

Whether a replica *existed* is known from three records, any one of which is enough:

* its **creation record**, written next to (not inside) its directory before its
  node first runs (:mod:`raykv.storage.layout`): survives a wiped replica directory;
* Ray's **reconstruction flag** (``was_current_actor_reconstructed``): every restart of
  an actor is a reconstruction, so a replica on a replaced disk is caught even though
  the creation record went with the disk;
* its creator said it **must exist** (``create=False``: a store reopening replicas the
  shard map lists).

The rule is pure and total (:func:`start_mode`), so the simulator runs the same
decision the actor does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StartMode(enum.Enum):
    FOUND = "found"
    """No data, never existed, created as a founding member: bootstrap the founding configuration."""
    OPEN = "open"
    """Data present: reopen it (a store created but not yet bootstrapped is bootstrapped by a founder)."""
    FRESH = "fresh"
    """No data, never existed, not a founder: an empty replica joining by a membership change."""
    AMNESIAC = "amnesiac"
    """No data, but it existed: take no part in Raft until removed from the group."""


@dataclass(frozen=True, slots=True)
class StartFacts:
    """What a shell knows about a replica when it starts it."""

    has_data: bool
    """Its directory holds a replica store."""
    founder: bool
    """Created as a founding member (``create=True`` and a non-empty founding configuration)."""
    create: bool
    """Its creator allows creating it (False: it must already exist)."""
    created_before: bool
    """Its creation record exists."""
    reconstructed: bool
    """This process is a restart of the replica (Ray re-ran its constructor)."""


def start_mode(facts: StartFacts) -> StartMode:
    """The one rule deciding what a starting replica may be (see the module docstring)."""
    if facts.has_data:
        return StartMode.OPEN
    if facts.created_before or facts.reconstructed or not facts.create:
        return StartMode.AMNESIAC
    return StartMode.FOUND if facts.founder else StartMode.FRESH
